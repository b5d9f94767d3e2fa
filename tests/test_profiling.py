"""Profiles: jax.profiler traces with step annotations, and the per-op summary."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from svhn_jax.run import profiling
from svhn_jax.errors import SvhnJaxError


def test_profile_steps_writes_a_trace_with_annotated_steps(tmp_path):
    @jax.jit
    def step(x, i):
        return jnp.tanh(x @ x) + i

    calls = []
    carry, session = profiling.profile_steps(
        lambda x, i: calls.append(i) or step(x, i), jnp.eye(16) * 0.5, tmp_path, steps=2, warmup=1)
    assert calls == [0, 1, 2] and carry.shape == (16, 16)
    assert session.parent == tmp_path / "plugins" / "profile"
    assert list(session.glob("*.xplane.pb")) and list(session.glob("*.trace.json.gz"))
    times = profiling.op_times(session)
    assert set(times["steps"]) == {1, 2}            # the warm-up step is not traced
    prims = profiling.primitives(step.lower(carry, 0).compile().as_text())
    assert "dot_general" in {prims.get(op) for op in times["ops"]}
    # A second profile (here within the same second, so into the same folder) is the one read.
    _, again = profiling.profile_steps(lambda x, i: step(x, i), carry, tmp_path, steps=1, warmup=0)
    assert set(profiling.op_times(again)["steps"]) == {0}


def test_op_times_counts_nested_ops_once(tmp_path):
    """A while op of 10 us whose body ran two ops of 3 and 2 us has 5 us of its own."""
    op = lambda name, ts, dur, tid=1: {"ph": "X", "name": name, "pid": 1, "tid": tid, "ts": ts,
                                       "dur": dur, "args": {"hlo_op": name}}
    events = [{"ph": "X", "name": "train", "pid": 1, "tid": 0, "ts": 0, "dur": 20,
               "args": {"step_num": "7"}},
              op("while.1", 1, 10), op("fusion.2", 2, 3), op("dot.3", 6, 2), op("dot.3", 12, 4),
              op("dot.3", 2, 5, tid=2),                   # another thread: not nested
              {"ph": "X", "name": "not an op", "pid": 1, "tid": 1, "ts": 3, "dur": 1}]
    session = tmp_path / "plugins" / "profile" / "s"
    session.mkdir(parents=True)
    with gzip.open(session / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert profiling.op_times(session) == {"steps": {7: 20.0},
                                           "ops": {"while.1": 5.0, "fusion.2": 3.0, "dot.3": 11.0}}


def test_primitives_from_hlo_metadata():
    hlo = ('  %ynn_fusion.5 = f32[64,128]{1,0} fusion(%a, %b), kind=kCustom, calls=%c, '
           'metadata={op_name="jit(steps)/while/body/closed_call/dot_general" stack_frame_id=160}\n'
           '  ROOT %copy.1 = f32[2]{0} copy(%x), metadata={op_name="jit(f)/transpose"}\n'
           '  %p = f32[2]{0} parameter(0)\n')
    assert profiling.primitives(hlo) == {"ynn_fusion.5": "dot_general", "copy.1": "transpose"}


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(SvhnJaxError, match="at least one traced step"):
        profiling.profile_steps(lambda c, i: c, 0, tmp_path, steps=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(SvhnJaxError, match="writable --profile"):
        profiling.profile_steps(lambda c, i: c, 0, tmp_path / "file" / "p")
    with pytest.raises(SvhnJaxError, match="no \\*.trace.json.gz"):
        profiling.op_times(tmp_path)

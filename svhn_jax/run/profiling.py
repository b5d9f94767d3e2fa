"""Profiles of compiled steps, for `svhn-jax train --profile DIR` and `bench --profile DIR`.

`profile_steps` runs a step function a few times untraced (compilation), then a
few times inside `jax.profiler.trace(DIR)`, each step in a
`StepTraceAnnotation("train", step_num=i)`. jax writes, with no extra package,

    DIR/plugins/profile/<date_time>/<host>.xplane.pb        XSpace protobuf, all events
    DIR/plugins/profile/<date_time>/<host>.trace.json.gz    Chrome trace-event JSON
    DIR/plugins/profile/<date_time>/perfetto_trace.json.gz  the same for Perfetto

`tensorboard --logdir DIR` shows the first in its Profile tab once the profile
plugin is installed (`pip install xprof`, formerly `tensorboard-plugin-profile`;
needed only to view); ui.perfetto.dev opens the last one as it is.
`op_times` sums the time of each XLA operation in a trace, so a test or a
README can say where a step's time goes without either viewer.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .. import atomic
from ..errors import SvhnJaxError

PROFILE_SUBDIR = Path("plugins") / "profile"


def profile_steps(step: Callable[[Any, int], Any], carry, logdir, *, steps: int = 5,
                  warmup: int = 1, name: str = "train"):
    """carry = step(carry, i) for i in range(warmup + steps); the last `steps` traced.

    Each traced call runs inside StepTraceAnnotation(name, step_num=i) and is waited
    for (block_until_ready) inside it, so a step's device work lands in its own
    annotation instead of the next one's. Returns (carry, the new trace folder).
    """
    if steps < 1 or warmup < 0:
        raise SvhnJaxError(f"--profile needs at least one traced step and warmup >= 0, "
                           f"got steps={steps}, warmup={warmup}")
    logdir = atomic.make_dir(logdir, "choose a writable --profile folder")
    before = _traces(logdir)
    for i in range(warmup):
        carry = jax.block_until_ready(step(carry, i))
    with jax.profiler.trace(str(logdir), create_perfetto_trace=True):
        for i in range(warmup, warmup + steps):
            with jax.profiler.StepTraceAnnotation(name, step_num=i):
                carry = jax.block_until_ready(step(carry, i))
    new = sorted(set(_traces(logdir).items()) - set(before.items()), key=lambda kv: kv[1])
    if not new:
        raise SvhnJaxError(f"jax.profiler wrote no trace under {logdir / PROFILE_SUBDIR}")
    return carry, new[-1][0].parent


def _traces(logdir: Path) -> dict:
    """{xplane file: modification time}. Folders are named to the second, so a second
    profile within the same second rewrites the first one's folder."""
    return {p: p.stat().st_mtime_ns for p in (logdir / PROFILE_SUBDIR).glob("*/*.xplane.pb")}


def trace_json(session: Path) -> Path:
    """The Chrome trace-event file of a trace folder (<host>.trace.json.gz)."""
    found = sorted(p for p in Path(session).glob("*.trace.json.gz"))
    if not found:
        raise SvhnJaxError(f"no *.trace.json.gz in {session}; pass a folder that "
                           f"profile_steps returned (DIR/plugins/profile/<date_time>)")
    return found[0]


def op_times(session: Path, *, step_name: str = "train") -> dict:
    """Where the traced steps' time went, from the trace-event file, in microseconds.

    Returns {"steps": {step_num: duration of its `step_name` annotation}, "ops": {XLA op name:
    self time summed over the traced steps}}. An XLA op is an event with an 'hlo_op'
    argument (a thunk on CPU, a kernel on GPU). Self time leaves out the ops nested
    inside it on the same thread (a `while` and its body), so nothing counts twice.
    """
    with gzip.open(trace_json(session), "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    steps = {int(e["args"]["step_num"]): float(e["dur"]) for e in events
             if e.get("name") == step_name and "step_num" in e.get("args", {})}
    ops = defaultdict(float)
    by_thread = defaultdict(list)
    for e in events:
        if "hlo_op" in e.get("args", {}):
            by_thread[(e["pid"], e["tid"])].append(e)
    for evs in by_thread.values():
        stack = []   # open ops enclosing the current one: (end time, name)
        for e in sorted(evs, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1][0] <= e["ts"]:
                stack.pop()
            if stack:
                ops[stack[-1][1]] -= e["dur"]
            ops[e["args"]["hlo_op"]] += e["dur"]
            stack.append((e["ts"] + e["dur"], e["args"]["hlo_op"]))
    return {"steps": steps, "ops": dict(ops)}


def primitives(hlo_text: str) -> dict:
    """{XLA op name: the jax primitive it came from ('dot_general', 'gather', ...)},
    read from the metadata of compiled HLO text (`jitted.lower(...).compile().as_text()`)."""
    found = re.findall(r'^\s*(?:ROOT )?%?([\w.-]+) = .*?metadata=\{op_name="([^"]*)"', hlo_text, re.M)
    return {op: path.rsplit("/", 1)[-1] for op, path in found}


def profile_training(state, hp, X, y, cfg, n: int, logdir, steps: int = 5) -> Path:
    """A trace of `steps` single training steps of epoch 0 after one untraced
    (compiling) step, on a copy of `state`: the run itself is unchanged.
    Returns the trace folder."""
    from ..step import train

    order = train.epoch_order(state.key, 0, n, cfg.batch)
    cfg = cfg._replace(keep_grads=False)   # once per segment in a run: not part of a step
    step = lambda s, i: train.run_steps(s, hp, X, y, order, i, cfg, 1)[0]
    return profile_steps(step, jax.tree.map(jnp.copy, state), logdir, steps=steps)[1]

"""Data parallel across devices and processes: the parts that need several devices
run in subprocesses, because JAX fixes its CPU device count when it starts.

    test_parallel_devices.py   8 devices, one process (run here in a subprocess)
    parallel_worker.py         one of 2 processes x 2 devices
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from svhn_jax import cli
from svhn_jax import flags
from svhn_jax.step import evaluate, mesh as meshes
from svhn_jax.errors import SvhnJaxError

import parallel_cases as cases

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in flags.ENV}
    return dict(env, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu", **extra)


def test_more_devices_than_jax_sees_is_a_clear_error(capsys):
    n = jax.device_count() + 1
    with pytest.raises(SvhnJaxError, match=f"set JAX_NUM_CPU_DEVICES={n} in the environment"):
        meshes.device_count(n, stacked=False)
    for bad in (0, -2, "two", "1.5"):
        with pytest.raises(SvhnJaxError, match="positive integer, all or auto"):
            meshes.device_count(bad, stacked=False)
    assert cli.main(["gradcheck", "--devices", str(n)]) == 2
    assert f"JAX_NUM_CPU_DEVICES={n}" in capsys.readouterr().err


def test_a_batch_that_does_not_split_is_a_clear_error():
    place = meshes.Placement(jax.sharding.AbstractMesh((1, 3), (meshes.MODELS, meshes.DATA)), 1, 1, False)
    with pytest.raises(SvhnJaxError, match=r"batch of 64 does not split evenly over 3 devices.*--batch 63"):
        meshes.check_batch(64, place)
    assert meshes.check_batch(63, place) == 63


def test_process_settings_from_arguments_or_environment():
    env = dict(zip(flags.ENV, ("10.0.0.1:1234", "2", "1")))
    assert flags.process_settings(environ={}) is None
    assert flags.process_settings(environ=env) == ("10.0.0.1:1234", 2, 1)
    assert flags.process_settings("h:9", 4, 3, environ=env) == ("h:9", 4, 3)
    bad = [({"SVHN_JAX_COORDINATOR": "h:1"}, "missing --num-processes"),
           (dict(env, SVHN_JAX_COORDINATOR="no-port"), "HOST:PORT"),
           (dict(env, SVHN_JAX_PROCESS_ID="2"), r"--process-id must be in \[0, 1\]"),
           (dict(env, SVHN_JAX_NUM_PROCESSES="x"), "must be integers")]
    for environ, message in bad:
        with pytest.raises(SvhnJaxError, match=message):
            flags.process_settings(environ=environ)


def test_on_1_2_4_and_8_devices():
    """tests/test_parallel_devices.py in a process with 8 CPU devices."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(TESTS / "test_parallel_devices.py")],
                       cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and " passed" in r.stdout and "skipped" not in r.stdout, r.stdout + r.stderr


def test_cli_gradcheck_on_4_devices_proves_the_sharded_backward():
    r = subprocess.run([sys.executable, "-m", "svhn_jax.cli", "gradcheck", "--devices", "4", "--batchnorm",
                        "--json", "--hidden", "6", "--in-dim", "5", "--batch", "8", "--fd-samples", "0",
                        "--activation", "relu"],
                       cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["max_rel_error_manual_vs_autodiff"] <= 1e-12
    assert out["max_rel_error_manual_vs_finite_diff"] <= 1e-6
    sharded = [c for c in out["checks"] if c["check"].startswith("sharded model")]
    titles = [c["check"] for c in sharded]   # --batchnorm: both placements, each in both modes
    assert [c["devices"] for c in sharded] == [4, 4, 4, 4], titles
    for placement, title in zip(("dense-batchnorm-relu (train)", "dense-batchnorm-relu (eval)",
                                 "dense-relu-batchnorm (train)", "dense-relu-batchnorm (eval)"), titles):
        assert placement in title and "4 devices x 2 rows" in title


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_train_the_one_device_model(tmp_path):
    env = _env(2, SVHN_JAX_COORDINATOR=f"localhost:{_free_port()}", SVHN_JAX_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, str(TESTS / "parallel_worker.py"), str(tmp_path)],
                              cwd=ROOT, env=dict(env, SVHN_JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    try:
        for p in procs:  # a failed peer must not hang the suite
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)[-3000:]
    out = [np.load(tmp_path / f"process{i}.npz") for i in range(2)]
    assert [int(o["devices"]) for o in out] == [4, 4] and [int(o["local_devices"]) for o in out] == [2, 2]
    # each process loaded only the rows of its own two devices
    assert [(int(o["rows_start"]), int(o["rows_stop"])) for o in out] == [(0, 186), (186, 372)]

    state, ce = cases.run("manual")   # one device, no mesh
    ref = [np.asarray(a) for a in jax.tree.leaves((state.params, state.bn_state))]
    got = [[o[f"leaf{i}"] for i in range(len(ref))] for o in out]
    assert all(np.array_equal(a, b) for a, b in zip(*got))   # one replicated model
    assert cases.max_diff(got[0], ref) <= cases.TOL_DEVICES
    np.testing.assert_allclose(out[0]["ce"], ce, rtol=cases.TOL_DEVICES)
    _, _, X_val, y_val = cases.data()
    acc = evaluate.evaluate(state.params, state.bn_state, evaluate.make_eval_set(X_val, y_val),
                         cases.cfg("manual").spec)[1]
    assert float(out[0]["val_acc"]) == float(out[1]["val_acc"]) == acc

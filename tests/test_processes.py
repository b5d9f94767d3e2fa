"""Several processes fail together, fast and clearly (README, "When a process fails").

Two real local processes of two forced CPU devices each, joined through
jax.distributed. Every test bounds each process with a timeout that fails the test
instead of hanging it, and ends every process it started.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from svhn_jax.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_PROCESS_LOST, EXIT_USAGE

from parallel_cases import TOL_DEVICES
from fake_svhn import synthetic_npz

TIMEOUT = 20   # --process-timeout: a silent peer is lost after TIMEOUT / 2 seconds
# 3 epochs of 44 steps: after the first, 88 steps are left for a signal or a kill to land in
RUN = ["--hidden", "16", "--batch", "32", "--epochs", "3", "--shift", "1", "--no-tensorboard",
       "--gradcheck-every", "11", "--process-timeout", str(TIMEOUT)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVHN_JAX_", "JAX_NUM_CPU"))}
    return dict(env, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")


def train(args_of):
    """argv_of for `svhn-jax train ARGS` as process i of two joined at port."""
    return lambda i, port: [sys.executable, "-m", "svhn_jax.cli", "train", *args_of(i),
                            "--coordinator", f"localhost:{port}", "--num-processes", "2",
                            "--process-id", str(i)]


class Processes:
    """Both processes of a run: started together, each waited for with a timeout,
    all of them killed at the end whatever happened."""

    def __init__(self, argv_of):
        port = _free_port()
        self.procs = [subprocess.Popen(argv_of(i, port), env=_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for i in range(2)]
        self.started = time.monotonic()

    def wait(self, timeout: float = 240) -> list[tuple[int, str, str]]:
        """[(exit code, stdout, stderr)] of both; fails the test after `timeout` s."""
        out = []
        for p in self.procs:
            left = max(1.0, timeout - (time.monotonic() - self.started))
            try:
                stdout, stderr = p.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"a process did not end within {timeout} s")
            out.append((p.returncode, stdout, stderr))
        return out

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.fixture
def processes():
    started = []

    def start(args_of):
        started.append(Processes(train(args_of)))
        return started[-1]

    yield start
    for group in started:
        group.kill()


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    """2,000 synthetic digits: 1,400 to train on, 44 steps an epoch at batch 32."""
    return synthetic_npz(tmp_path_factory.mktemp("data"), 2000)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _checkpoint_step(run: Path) -> int:
    with np.load(run / "checkpoint.npz") as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
    p = meta["progress"]
    return len(p["history"]) * 44 + p["sums"]["steps"]


def _wait_for(path: Path, procs: Processes, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs.procs):
            procs.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, npz):
    """The two-process run that the interrupted ones must end as."""
    out = tmp_path_factory.mktemp("whole") / "run"
    group = Processes(train(lambda i: ["--data", str(npz), "--out", str(out), *RUN]))
    try:
        results = group.wait()
    finally:
        group.kill()
    assert [r[0] for r in results] == [0, 0], results[0][2][-2000:]
    m = _metrics(out)   # the per-step check on both processes' devices, with the eval-mode check
    assert m["gradchecks"] - m["gradchecks_eval"] == 3 * 4 and m["gradchecks_failed"] == 0
    return out, m


def test_sigint_to_process_0_stops_both_at_the_same_step_and_resumes_exactly(
        processes, tmp_path, npz, uninterrupted):
    out = tmp_path / "run"
    group = processes(lambda i: ["--data", str(npz), "--out", str(out), *RUN, "--checkpoint-every", "10"])
    _wait_for(out / "history.csv", group)   # an epoch is done: interrupt the second
    group.procs[0].send_signal(signal.SIGINT)
    results = group.wait()
    assert [r[0] for r in results] == [EXIT_INTERRUPTED, EXIT_INTERRUPTED]
    steps = [re.search(r"at step (\d+)", r[2]).group(1) for r in results]
    assert steps[0] == steps[1] and "SIGINT received in process 0" in results[1][2]
    assert _checkpoint_step(out) == int(steps[0]) and _metrics(out)["status"] == "interrupted"
    resumed = processes(lambda i: ["--resume", str(out), "--process-timeout", str(TIMEOUT)])
    assert [r[0] for r in resumed.wait()] == [0, 0]
    assert _metrics(out)["params_sha256"] == uninterrupted[1]["params_sha256"]


def test_a_killed_process_ends_the_other_with_the_resume_command(processes, tmp_path, npz,
                                                                 uninterrupted):
    out = tmp_path / "run"
    group = processes(lambda i: ["--data", str(npz), "--out", str(out), *RUN, "--checkpoint-every", "10"])
    _wait_for(out / "checkpoint.npz", group)
    time.sleep(0.5)   # inside an epoch, after its first checkpoint
    group.procs[1].kill()
    killed = time.monotonic()
    code, _, err = group.wait()[0]
    assert code == EXIT_PROCESS_LOST and time.monotonic() - killed <= TIMEOUT / 2 + 10
    assert "process 1 of 2 is lost" in err
    command = re.search(r"resume with: (svhn-jax train --resume \S+)", err).group(1)
    assert command == f"svhn-jax train --resume {out}"
    # on one process, what is left: the last checkpoint is intact and ends as the whole run
    r = subprocess.run([sys.executable, "-m", "svhn_jax.cli", *command.split()[1:], "--quiet"],
                       env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    mine, whole = _state(out), _state(uninterrupted[0])
    assert max(np.max(np.abs(a - b)) / np.max(np.abs(b)) for a, b in zip(mine, whole)) <= TOL_DEVICES


def _state(run: Path) -> list:
    """The float arrays of the final train state (parameters, BatchNorm and Adam state)."""
    with np.load(run / "checkpoint.npz") as z:
        arrays = [z[k] for k in sorted(z.files) if k != "__meta__"]
    return [a for a in arrays if a.dtype.kind == "f" and a.size and np.max(np.abs(a)) > 0]


@pytest.mark.parametrize("case", ["existing run folder", "data only process 1 cannot read",
                                  "mismatched --hidden"])
def test_an_error_before_training_ends_both_processes_alike(processes, tmp_path, npz, case):
    out = tmp_path / "run"
    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz.read_bytes()[:1000])   # a truncated copy
    if case == "existing run folder":
        out.mkdir()
        (out / "something").write_text("x")
    args = {
        "existing run folder": lambda i: ["--data", str(npz)],
        "data only process 1 cannot read": lambda i: ["--data", str(npz if i == 0 else bad)],
        "mismatched --hidden": lambda i: ["--data", str(npz), "--hidden", "16" if i == 0 else "32"],
    }[case]
    group = processes(lambda i: [*RUN, *args(i), "--out", str(out)])
    results = group.wait(timeout=30 + 60)
    assert time.monotonic() - group.started <= 30 + 30   # JAX's start-up included
    codes, messages = {r[0] for r in results}, {r[2].strip().splitlines()[-1] for r in results}
    assert len(codes) == 1 and len(messages) == 1, results
    code, message = codes.pop(), messages.pop()
    expected = {"existing run folder": (EXIT_USAGE, "process 0: --out"),
                "data only process 1 cannot read": (EXIT_DATA, "process 1: "),
                "mismatched --hidden": (EXIT_USAGE, "the processes disagree on hidden")}[case]
    assert code == expected[0] and message.startswith("error: " + expected[1]), message
    if case == "mismatched --hidden":
        assert "process 0 has [16], process 1 has [32]" in message


def test_an_ensemble_a_sweep_and_lr_find_compose_in_two_processes(tmp_path):
    """compose_worker.py in both processes; their results against one process here."""
    import compose_cases as cases
    from svhn_jax import config
    from svhn_jax.run import parts
    from svhn_jax.tune import lrfind, sweep

    worker = Path(__file__).resolve().parent / "compose_worker.py"
    group = Processes(lambda i, port: [sys.executable, str(worker), str(i), str(port), str(tmp_path)])
    try:
        results = group.wait(timeout=400)
    finally:
        group.kill()
    assert [r[0] for r in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    got = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    same = ("params_sha256", "steps", "best_epoch", "best_val_acc", "gradchecks", "mesh")
    for g in got:   # every process saw the same run (process 0 alone scored test and wrote it)
        g["ensemble"] = {k: g["ensemble"][k] for k in same}
    assert got[0] == got[1] and got[0]["devices"] == 4
    ens = got[0]["ensemble"]
    assert ens["mesh"] == {"models": 2, "data": 2}
    c = config.make(**{**cases.SETTINGS, "checkpoint_every": 0, "devices": "1"})
    data = parts.load_split(c)
    data.pop("test")
    one = sweep.train_group([c.replace(lr=lr) for lr in (1e-3, 3e-3)], data)
    np.testing.assert_allclose(got[0]["sweep_val_loss"],
                               [[h["val_loss"] for h in r["history"]] for r in one], rtol=1e-5)
    assert got[0]["sweep_checks"] == [cases.STEPS + cases.SETTINGS["epochs"]] * 2   # with the eval-mode checks
    assert got[0]["sweep_resumed_as_whole"]
    lr = lrfind.lr_find(c, tmp_path / "lr_one", steps=20, lr_min=1e-5, lr_max=1.0)
    assert got[0]["lr_find"]["gradchecks"] == 20 and got[0]["lr_find"]["gradchecks_failed"] == 0
    assert got[0]["lr_find"]["suggested_lr"] == pytest.approx(lr["suggested_lr"], rel=1e-6)


def test_a_process_that_never_comes_ends_the_other_within_the_timeout(tmp_path, npz):
    """Only process 0 of two is started: it gives up joining after --process-timeout."""
    r = subprocess.run(train(lambda i: ["--data", str(npz), "--out", str(tmp_path / "run"), *RUN[:-2],
                                        "--process-timeout", "5"])(0, _free_port()),
                       env=_env(), capture_output=True, text=True, timeout=5 + 60)
    assert r.returncode == EXIT_USAGE
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not join the processes at localhost:") and "within 5 s" in last
    assert not (tmp_path / "run").exists()

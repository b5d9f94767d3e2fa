"""Every feature composes with every other (README, "What composes"): a single run and
an ensemble on one device and on a mesh of 4 devices, each with the per-step check,
mid-epoch checkpoints, and a stop and resume that ends bit for bit as the
uninterrupted run (compose_cases.flow). The 4-device cells run in a subprocess
(tests/test_compose_devices.py with JAX_NUM_CPU_DEVICES=4); the two-process cells are
in tests/test_processes.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import compose_cases as cases

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def devices_job():
    """test_compose_devices.py on 4 forced CPU devices, started first: it runs while
    the one-device cells below do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVHN_JAX_")}
    job = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(TESTS / "test_compose_devices.py")], cwd=TESTS.parent,
                           env=dict(env, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield job
    if job.poll() is None:
        job.kill()
        job.communicate()


def test_a_single_run_checks_every_step_and_resumes_mid_epoch(devices_job, tmp_path):
    cases.flow(tmp_path)


def test_an_ensemble_checks_every_member_and_resumes_mid_epoch(devices_job, tmp_path):
    m = cases.flow(tmp_path, ensemble=2)
    evals = 2 * cases.SETTINGS["epochs"]   # each member's eval-mode check at each epoch's end
    assert m["gradchecks"] == 2 * cases.STEPS + evals and m["gradchecks_eval"] == evals
    assert m["gradchecks_failed"] == 0


def test_on_4_devices(devices_job):
    out, _ = devices_job.communicate(timeout=900)
    assert devices_job.returncode == 0, out[-4000:]
    assert " passed" in out and "skipped" not in out, out[-2000:]


def test_a_sweep_stopped_inside_a_group_resumes_to_the_same_results(devices_job, tmp_path, monkeypatch):
    """The second group continues from its mid-epoch checkpoint, the first is read back,
    and results.csv ends as an uninterrupted sweep's; no checkpoint is left behind."""
    resumed, whole = cases.stopped_sweep(tmp_path, monkeypatch)
    assert resumed == whole
    assert not list((tmp_path / "cut" / "groups").glob("*/checkpoint*.npz"))


def test_lr_find_checks_every_step_and_keeps_nothing_to_resume(devices_job, tmp_path, monkeypatch):
    """The range test with the per-step check; a stop request ends it and says so
    (it has no --checkpoint-every and no --resume: README, "What composes")."""
    import signal

    from svhn_jax import cli, config
    from svhn_jax.errors import Interrupted
    from svhn_jax.step import parallel
    from svhn_jax.tune import lrfind

    c = config.make(**{**cases.SETTINGS, "checkpoint_every": 0})
    r = lrfind.lr_find(c, tmp_path / "lr", steps=20)
    assert r["gradchecks"] == 20 and r["gradchecks_failed"] == 0
    real = parallel.run_segment
    monkeypatch.setattr(parallel, "run_segment",
                        lambda *a, **k: signal.raise_signal(signal.SIGINT) or real(*a, **k))
    with pytest.raises(Interrupted, match="nothing is kept: run it again"):
        lrfind.lr_find(c, tmp_path / "cut", steps=20)
    with pytest.raises(SystemExit) as refused:   # argparse: one error line, exit 2
        cli.main(["lr-find", "--data", "synthetic", "--out", str(tmp_path / "x"), "--checkpoint-every", "5"])
    assert refused.value.code == 2

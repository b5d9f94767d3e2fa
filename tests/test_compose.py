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


def test_a_sweep_stopped_inside_a_group_resumes_to_the_same_results(devices_job, tmp_path, monkeypatch,
                                                                     capsys):
    """Two groups of two configurations; a stop request in the second group's third
    segment (5 steps each, 8 a group): the first group's results are kept, the second
    continues from its mid-epoch checkpoint, and results.csv ends as an uninterrupted
    sweep's."""
    import signal

    from svhn_jax import cli, config
    from svhn_jax.errors import Interrupted
    from svhn_jax.step import parallel
    from svhn_jax.tune import sweep

    base = config.make(**cases.SETTINGS)
    axes = {"lr": [1e-3, 3e-3], "hidden": [(8,), (4,)]}
    sweep.sweep(base, axes, tmp_path / "whole", final=False, quiet=True)
    calls, real = [], parallel.run_segment

    def stop_in_the_second_group(*a, **k):
        calls.append(1)
        if len(calls) == 8 + 3:
            signal.raise_signal(signal.SIGINT)   # honoured at the end of this segment
        return real(*a, **k)

    monkeypatch.setattr(parallel, "run_segment", stop_in_the_second_group)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match=f"Resume with: svhn-jax sweep --resume {cut}"):
        sweep.sweep(base, axes, cut, final=False, quiet=True)
    monkeypatch.undo()
    assert (cut / "groups" / "g000" / "results.json").exists()
    assert not (cut / "groups" / "g001" / "results.json").exists()
    assert (cut / "groups" / "g001" / "checkpoint.npz").exists()
    assert cli.main(["sweep", "--resume", str(cut), "--json"]) == 0
    capsys.readouterr()
    assert (cut / "results.csv").read_text() == (tmp_path / "whole" / "results.csv").read_text()
    assert not list((cut / "groups").glob("*/checkpoint*.npz"))   # kept no longer than needed

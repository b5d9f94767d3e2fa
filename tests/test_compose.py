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
    assert m["gradchecks"] == 2 * cases.STEPS and m["gradchecks_failed"] == 0


def test_on_4_devices(devices_job):
    out, _ = devices_job.communicate(timeout=900)
    assert devices_job.returncode == 0, out[-4000:]
    assert " passed" in out and "skipped" not in out, out[-2000:]

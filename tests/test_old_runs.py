"""Run folders written by release 0.2 still resume and evaluate with today's code.

tests/data/runs_0_2.zip holds two interrupted runs made by commit 560bdce (the last
release before the one training engine), with

    svhn_jax.runs.train_run(config.make(data="synthetic", synthetic_n=300, hidden=(4,),
        epochs=3, batch=32, tensorboard=False, shift=1, lr=3e-3, **extra), name,
        stop_after_steps=stop)

single:   extra = checkpoint_every=3, gradcheck_every=2; stopped after 10 steps (mid-epoch)
ensemble: extra = ensemble=2; stopped after epoch 1 (7 steps)

Resumed, each must end with the parameters of today's uninterrupted run of the same
settings, bit for bit (resuming is exact and the step is unchanged), and `evaluate`
must read both before and after.
"""

import zipfile
from pathlib import Path

import pytest

from svhn_jax.run import evaluate, folder, launch

ARCHIVE = Path(__file__).resolve().parent / "data" / "runs_0_2.zip"


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("old")
    with zipfile.ZipFile(ARCHIVE) as z:
        z.extractall(root)
    return root


@pytest.mark.parametrize("name", ["single", "ensemble"])
def test_an_old_run_folder_evaluates_resumes_and_ends_as_an_uninterrupted_run(old_runs, tmp_path, name):
    run = old_runs / name
    assert folder.read_metrics(run)["status"] == "interrupted"
    before = evaluate.evaluate_run(run)   # the old best.npz, scored with today's code
    assert before["split"] == "test" and 0.0 <= before["accuracy"] <= 1.0
    resumed = launch.resume_run(run, quiet=True)
    assert resumed["status"] == "completed" and resumed["epochs_run"] == 3
    c, _ = folder.read_run(run)
    fresh = launch.train_run(c, tmp_path / "fresh", quiet=True)
    assert resumed["params_sha256"] == fresh["params_sha256"]
    assert evaluate.evaluate_run(run)["accuracy"] == fresh["test_acc"]
    if name == "single":   # both sessions' checks, each checked step once: every 2nd step of
        rows = (run / "gradchecks.csv").read_text().splitlines()[1:]   # each 7-step epoch
        assert [int(r.split(",")[0]) for r in rows] == [s for s in range(21) if s % 7 % 2 == 0]

"""What tests/test_compose.py and tests/test_compose_devices.py share (not a test file):
one small run per kind, and the flow every kind must pass on every placement.

The flow: an uninterrupted run with the per-step check on every step and a checkpoint
every 5 steps; the same run stopped after 7 steps (inside an epoch, after a mid-epoch
checkpoint) and resumed. The resumed run must end with the uninterrupted run's
parameters bit for bit, and every step must have been checked once, and passed.
"""

import csv
import json

import jax
import numpy as np
import pytest

from svhn_jax import config
from svhn_jax.errors import Interrupted
from svhn_jax.run import checkpoint, folder, launch, processes

# 140 training images in batches of 16: 9 steps an epoch, the last one wrapping; with a
# checkpoint every 5 steps, 2 segments an epoch (5 and 4 steps).
SETTINGS = dict(data="synthetic", synthetic_n=200, hidden=(8,), batchnorm="before", batch=16,
                epochs=2, shift=1, lr=3e-3, tensorboard=False, gradcheck_every=1,
                checkpoint_every=5)
STOP_AFTER = 7
STEPS = 2 * 9
SEGMENTS = 2 * 2   # run_segment calls of one uninterrupted run


def checked_steps(run, members=1) -> list:
    """Every checked training step of gradchecks.csv (each member's, for an ensemble),
    all passed, as the eval-mode checks of each epoch's end (mode 'eval')."""
    rows = list(csv.DictReader((run / "gradchecks.csv").open()))
    assert rows and all(r["passed"] == "True" for r in rows)
    assert sum(r["mode"] == "eval" for r in rows) == SETTINGS["epochs"] * members
    return sorted(int(r["step"]) for r in rows if r["mode"] == "train")


def state(run):
    """The final train state in a run folder's checkpoint (members stacked)."""
    from svhn_jax.data import preprocess
    from svhn_jax.step import settings, train

    c, derived = folder.read_run(run)
    cfg = settings.step_config(c, train.steps_per_epoch(derived["n_train"], c.batch))
    dim = preprocess.input_dim(derived["preprocessing"])
    make = lambda: launch.initial_states(launch.member_configs(c), cfg, dim, c.ensemble > 1)
    return checkpoint.load(run / "checkpoint.npz", jax.eval_shape(lambda: {"state": make()}))[0]["state"]


def flow(tmp_path, **settings) -> dict:
    """The uninterrupted run's metrics, after checking that the stopped and resumed
    run ends the same; see the module docstring."""
    c = config.make(**{**SETTINGS, **settings})
    whole = launch.train_run(c, tmp_path / "whole", quiet=True)
    with pytest.raises(Interrupted, match="--resume"):
        launch.train_run(c, tmp_path / "cut", quiet=True, stop_after_steps=STOP_AFTER)
    with np.load(tmp_path / "cut" / "checkpoint.npz") as z:   # stopped inside the epoch
        assert json.loads(bytes(z["__meta__"]).decode())["progress"]["sums"]["steps"] == STOP_AFTER
    resumed = launch.resume_run(tmp_path / "cut", quiet=True)
    assert resumed["status"] == whole["status"] == "completed"
    assert resumed["params_sha256"] == whole["params_sha256"]
    # every step, and each epoch's end in eval mode, of every member
    assert resumed["gradchecks"] == whole["gradchecks"] == (STEPS + SETTINGS["epochs"]) * c.ensemble
    assert resumed["gradchecks_failed"] == whole["gradchecks_failed"] == 0
    if processes.is_main_process():   # process 0 alone writes the run folders
        k = c.ensemble
        assert checked_steps(tmp_path / "whole", k) == checked_steps(tmp_path / "cut", k) == \
            sorted(list(range(STEPS)) * k)
    return whole


def stopped_sweep(tmp_path, monkeypatch, stop_in_process=0) -> tuple:
    """A sweep of two groups of two configurations with the per-step check and a
    checkpoint every 5 steps, stopped by a Ctrl-C in the second group's third segment
    (sent to process `stop_in_process` only), then resumed: (the resumed sweep's
    results.csv, the uninterrupted one's) as text, in process 0 (None elsewhere)."""
    import signal

    from svhn_jax.step import parallel
    from svhn_jax.tune import sweep

    base = config.make(**SETTINGS)
    axes = {"lr": [1e-3, 3e-3], "hidden": [(8,), (4,)]}
    sweep.sweep(base, axes, tmp_path / "whole", final=False, quiet=True)
    calls, real = [], parallel.run_segment

    def stop_in_the_second_group(*a, **k):
        calls.append(1)
        if len(calls) == SEGMENTS + 3 and jax.process_index() == stop_in_process:
            signal.raise_signal(signal.SIGINT)   # honoured at the end of this segment
        return real(*a, **k)

    monkeypatch.setattr(parallel, "run_segment", stop_in_the_second_group)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match=f"Resume with: svhn-jax sweep --resume {cut}"):
        sweep.sweep(base, axes, cut, final=False, quiet=True)
    monkeypatch.undo()
    if processes.is_main_process():
        assert (cut / "groups" / "g000" / "results.json").exists()
        assert not (cut / "groups" / "g001" / "results.json").exists()
        assert (cut / "groups" / "g001" / "checkpoint.npz").exists()
    sweep.resume_sweep(cut, quiet=True)
    if not processes.is_main_process():   # process 0 writes them once it is done: no sooner
        return None, None
    return (cut / "results.csv").read_text(), (tmp_path / "whole" / "results.csv").read_text()

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
from svhn_jax.run import checkpoint, folder, launch

# 280 training images in batches of 16: 18 steps an epoch, the last one wrapping.
SETTINGS = dict(data="synthetic", synthetic_n=400, hidden=(8,), batchnorm="before", batch=16,
                epochs=2, shift=1, lr=3e-3, tensorboard=False, gradcheck_every=1,
                checkpoint_every=5)
STOP_AFTER = 7
STEPS = 2 * 18


def checked_steps(run, members=1) -> list:
    """Every checked step of gradchecks.csv (each member's, for an ensemble), all passed."""
    rows = list(csv.DictReader((run / "gradchecks.csv").open()))
    assert rows and all(r["passed"] == "True" for r in rows)
    return sorted(int(r["step"]) for r in rows)


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
    k = c.ensemble
    assert checked_steps(tmp_path / "whole", k) == checked_steps(tmp_path / "cut", k) == \
        sorted(list(range(STEPS)) * k)
    return whole

"""Label smoothing (--smoothing), the setting README's "Adding a setting" adds as its
example: a RunConfig field, a train.Hyper field and its use in the loss. Every kind
of run honours it, because every kind builds its Hyper from the RunConfig by field
name (step.settings.hyper): a single run, an ensemble, a sweep (where it is a vmapped
value: several smoothings train in one compiled group) and the range test."""

import numpy as np
import pytest

from svhn_jax import config
from svhn_jax.run import launch, parts
from svhn_jax.step import settings, train
from svhn_jax.tune import lrfind, sweep

SETTINGS = dict(data="synthetic", synthetic_n=300, hidden=(8,), batch=32, epochs=1, lr=3e-3,
                tensorboard=False)


def test_the_setting_reaches_the_traced_hyperparameters():
    c = config.make(**SETTINGS, smoothing=0.2)
    assert float(settings.hyper(c).smoothing) == pytest.approx(0.2)
    assert "smoothing" in config.VMAPPED and "smoothing" in train.Hyper._fields
    assert float(settings.hypers([c, c.replace(smoothing=0.0)]).smoothing[1]) == 0.0


@pytest.mark.parametrize("ensemble", [1, 2])
def test_runs_and_ensembles_train_differently_with_it(tmp_path, ensemble):
    fp = {s: launch.train_run(config.make(**SETTINGS, ensemble=ensemble, smoothing=s),
                              tmp_path / str(s), quiet=True)["params_sha256"] for s in (0.0, 0.3)}
    assert fp[0.0] != fp[0.3]


def test_a_sweep_trains_every_smoothing_in_one_group(tmp_path):
    base = config.make(**SETTINGS)
    s = sweep.sweep(base, {"smoothing": [0.0, 0.3]}, tmp_path / "sw", final=False, quiet=True)
    assert s["groups"] == 1 and s["configurations"] == 2
    data = parts.load_split(base)
    data.pop("test")
    one = sweep.train_group([base.replace(smoothing=0.3)], data)
    rows = {r["smoothing"]: r for r in s["results"]}
    assert rows[0.3]["final_val_loss"] == pytest.approx(one[0]["final_val_loss"], rel=1e-5)
    assert rows[0.0]["final_val_loss"] != pytest.approx(rows[0.3]["final_val_loss"], rel=1e-3)


def test_the_range_test_honours_it(tmp_path):
    got = [np.loadtxt(tmp_path / str(s) / "lr_find.csv", delimiter=",", skiprows=1, usecols=2)
           for s in (0.0, 0.3) if lrfind.lr_find(config.make(**SETTINGS, smoothing=s), tmp_path / str(s),
                                                 steps=12)]
    assert got[0][0] == got[1][0]          # the first step's loss: the same parameters
    assert not np.array_equal(got[0][1:], got[1][1:])   # then the updates differ

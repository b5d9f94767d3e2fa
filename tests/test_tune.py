"""Sweeps: vmapped groups equal separate runs, divergence is contained, test is
touched once after selection; value parsing; the learning-rate range test."""

import csv
import json

import pytest

import jax

from svhn_jax import cli, config
from svhn_jax.run import outputs, parts as rundata, launch as runs
from svhn_jax.tune import sweep as tune
from svhn_jax.errors import SvhnJaxError

BASE = dict(hidden=[16], epochs=2, batch=128, seed=0, split_seed=0)


@pytest.fixture(scope="module")
def base_config(svhn_8k_path):
    return lambda **kw: config.make(data=str(svhn_8k_path), **{**BASE, **kw})


def test_parse_values_lists_and_ranges():
    assert tune.parse_values("lr", "1e-3,1e-2") == [1e-3, 1e-2]
    assert tune.parse_values("hidden", "128,512x256") == [(128,), (512, 256)]
    bn = tune.parse_values("batchnorm", "off,on,after")
    assert [config.make(batchnorm=b).batchnorm for b in bn] == ["none", "before", "after"]
    assert tune.parse_values("batch", "64,512") == [64, 512]
    r = tune.parse_values("lr", "1e-4:1e-1:log:4")
    assert tune._grid_points(r) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    for bad in ("1e-4:1e-1:cubic:4", "0:1:log:3", "a:b:log:2"):
        with pytest.raises(SvhnJaxError, match="range"):
            tune.parse_values("lr", bad)
    with pytest.raises(SvhnJaxError, match="cannot read"):
        tune.parse_values("batch", "64,many")
    with pytest.raises(SvhnJaxError, match="cannot sweep patience"):
        tune.parse_values("patience", "1,2")


def test_grid_and_random_search():
    axes = {"lr": tune.parse_values("lr", "1e-4:1e-1:log:4"), "optimizer": ["adam", "sgd"]}
    assert len(tune.expand(axes)) == 8
    a = tune.expand(axes, search="random", trials=5, seed=3)
    assert a == tune.expand(axes, search="random", trials=5, seed=3)
    assert all(1e-4 <= c["lr"] <= 1e-1 for c in a) and len(a) == 5
    assert a != tune.expand(axes, search="random", trials=5, seed=4)


def test_vmapped_group_matches_separate_runs(tmp_path, base_config):
    """Three configurations trained in one vmapped program give, per configuration,
    what a separate `svhn-jax train` run gives (within float32 rounding: measured
    ~1e-7 relative after 2 epochs; the bound leaves 100x margin)."""
    configs = [base_config(lr=lr, reg=reg, seed=seed)
               for lr, reg, seed in [(1e-3, 0.0, 0), (3e-3, 1e-3, 1), (1e-2, 0.0, 2)]]
    parts = rundata.load_split(configs[0])
    parts.pop("test")
    grouped = tune.train_group(configs, parts)
    for i, (c, g) in enumerate(zip(configs, grouped)):
        alone = runs.train_run(c, tmp_path / f"alone{i}", quiet=True)
        hist = list(csv.DictReader((tmp_path / f"alone{i}" / "history.csv").open()))
        for h_alone, h_group in zip(hist, g["history"]):
            # A GPU multiplies float32 matrices with reduced precision by default, and vmap
            # changes the product's shape: allow for it there (README, "On a GPU").
            rel = 1e-5 if jax.default_backend() == "cpu" else 2e-3
            assert float(h_alone["val_loss"]) == pytest.approx(h_group["val_loss"], rel=rel)
            assert float(h_alone["train_loss"]) == pytest.approx(h_group["train_loss"], rel=rel)
            assert float(h_alone["val_acc"]) == pytest.approx(h_group["val_acc"], abs=1.5 / 800)
        assert alone["best_val_acc"] == pytest.approx(g["best_val_acc"], abs=1.5 / 800)


def test_sweep_survives_divergence_and_touches_test_once_after_selection(tmp_path, monkeypatch,
                                                                        base_config):
    events = []
    real_group, real_test = tune.train_group, outputs.evaluate_on_test
    monkeypatch.setattr(tune, "train_group", lambda *a, **k: events.append("group") or real_group(*a, **k))
    monkeypatch.setattr(outputs, "evaluate_on_test", lambda *a, **k: events.append("test") or real_test(*a, **k))
    base = base_config(optimizer="sgd")
    axes = {"lr": [1e-2, 1e5], "hidden": [(16,), (8,)]}   # lr 1e5 diverges
    s = tune.sweep(base, axes, tmp_path / "sw", quiet=True)
    assert events == ["group", "group", "test"]
    statuses = {(r["lr"], r["hidden"]): r["status"] for r in s["results"]}
    assert statuses[(1e5, "16")] == statuses[(1e5, "8")] == "diverged"
    assert statuses[(1e-2, "16")] == statuses[(1e-2, "8")] == "completed"
    assert s["best"]["lr"] == 1e-2
    assert s["results"][0]["best_val_acc"] >= s["results"][1]["best_val_acc"]
    for name in ("results.csv", "results.json", "curves.png", "lr_sweep.png", "heatmap.png"):
        assert (tmp_path / "sw" / name).stat().st_size > 0
    assert "test_acc" in s["final"] and s["overlap_train_val"] == 0
    # the final run folder is an ordinary run
    assert cli.main(["evaluate", "--run", str(tmp_path / "sw" / "final"), "--split", "test", "--json"]) == 0


def test_sweep_cli_on_synthetic_data(tmp_path, capsys):
    code = cli.main(["sweep", "--data", "synthetic", "--synthetic-n", "3000", "--out", str(tmp_path / "s"),
                     "--lr", "1e-3:1e-2:log:2", "--optimizer", "adam,momentum", "--hidden", "16",
                     "--epochs", "1", "--batch", "64", "--final-on", "train+val", "--json"])
    assert code == 0
    s = json.loads(capsys.readouterr().out)
    assert s["configurations"] == 4 and s["groups"] == 2
    assert {r["optimizer"] for r in s["results"]} == {"adam", "momentum"}
    assert s["final"]["status"] == "completed"


def test_lr_find(tmp_path, capsys, svhn_8k_path):
    code = cli.main(["lr-find", "--data", str(svhn_8k_path), "--out", str(tmp_path / "lr"), "--hidden", "32",
                     "--steps", "120", "--lr-min", "1e-6", "--lr-max", "10", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert 1e-6 < r["suggested_lr"] < 1.0
    assert r["steps_read"] < 120   # the loss blows up before lr reaches 10
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 0


def test_integer_ranges_give_integers():
    pts = tune.expand({"batch": tune.parse_values("batch", "32:64:lin:3")})
    assert [p["batch"] for p in pts] == [32, 48, 64] and all(type(p["batch"]) is int for p in pts)

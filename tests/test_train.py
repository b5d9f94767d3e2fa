"""Training end to end on real SVHN digits, the jitted epoch, and run folders."""

import csv
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax import cli, config
from svhn_jax.run import launch as runs
from svhn_jax.step import train
from svhn_jax.nn import model, stepcheck
from svhn_jax.errors import EXIT_DIVERGED, SvhnJaxError

FAST = dict(hidden=[32], epochs=2, batch=128, seed=0)


@pytest.fixture(scope="module")
def run_config(svhn_8k_path):
    return lambda **kw: config.make(data=str(svhn_8k_path), **{**FAST, **kw})


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, run_config):
    """A short real run with per-step gradient checks, shared by several tests."""
    out = tmp_path_factory.mktemp("runs") / "short"
    metrics = runs.train_run(run_config(epochs=3, hidden=[64], gradcheck_every=20), out, quiet=True)
    return out, metrics


def test_short_run_learns_and_writes_every_output(short_run):
    out, m = short_run
    assert m["status"] == "completed"
    assert m["best_val_acc"] > 0.6          # chance is 10%, always-"1" is 19%
    assert m["test_acc"] > 0.6 and abs(m["n_test"] - 1600) <= 10   # stratified rounding
    for name in ("config.json", "history.csv", "metrics.json", "checkpoint.npz", "best.npz",
                 "gradchecks.csv", "loss.png", "accuracy.png", "gradchecks.png", "confusion.png",
                 "misclassified.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    derived = json.loads((out / "config.json").read_text())["derived"]
    assert derived["preprocessing"]["mode"] == "image"
    assert derived["n_train"] + derived["n_val"] + derived["n_test"] == 8000


def test_per_step_gradient_checks_are_recorded_and_tight(short_run):
    out, m = short_run
    rows = list(csv.DictReader((out / "gradchecks.csv").open()))
    steps_per_epoch = train.steps_per_epoch(m["n_train"], 128)
    # a check at the start of each epoch and every 20 steps within it, and one in eval
    train_rows = [r for r in rows if r["mode"] == "train"]   # mode at the end of each epoch
    assert len(train_rows) == 3 * len(range(0, steps_per_epoch, 20))
    assert [r["epoch"] for r in rows if r["mode"] == "eval"] == ["1", "2", "3"]
    assert len(rows) == m["gradchecks"] and m["gradchecks_eval"] == 3
    tol = stepcheck.tolerance()                # float32 gradients: see nn/stepcheck.py
    assert max(float(r["manual_vs_autodiff"]) for r in rows) <= tol
    assert max(float(r["directional_jvp"]) for r in rows) <= tol
    smooth = [float(r["directional_fd"]) for r in rows if r["smooth"] == "True"]
    assert len(smooth) >= 0.9 * len(rows)      # kinks inside the step are rare
    assert max(smooth) <= tol and m["gradchecks_failed"] == 0


def test_evaluate_scores_the_held_out_part_by_default(short_run, capsys):
    out, m = short_run
    assert cli.main(["evaluate", "--run", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) >= {"accuracy", "loss", "n", "split", "overlap_with_training", "per_class_accuracy",
                      "confusion"}
    assert (r["split"], r["n"], r["overlap_with_training"]) == ("test", m["n_test"], 0)
    assert r["accuracy"] == pytest.approx(m["test_acc"], abs=1e-6)
    assert len(r["per_class_accuracy"]) == 10 and np.array(r["confusion"]).sum() == m["n_test"]


def test_evaluate_all_says_it_scored_training_images(short_run, capsys):
    out, m = short_run
    assert cli.main(["evaluate", "--run", str(out), "--split", "all", "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert (r["split"], r["n"], r["overlap_with_training"]) == ("all", 8000, m["n_train"])
    assert f"warning: {m['n_train']} of the 8000 scored images" in captured.err
    assert cli.main(["evaluate", "--run", str(out), "--split", "train"]) == 0
    assert f"{m['n_train']} seen in training" in capsys.readouterr().out


def test_evaluate_on_other_data_reports_overlap(short_run, svhn_8k, tmp_path, capsys):
    """The slice is official test images 0..7999: a run trained on it and scored on
    'other' data holding some of them must say so."""
    out, m = short_run
    X, y = svhn_8k
    other = tmp_path / "other.npz"
    np.savez(other, X=X[::4], y=y[::4])      # 2000 images, about 70% of them trained on
    assert cli.main(["evaluate", "--run", str(out), "--data", str(other), "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["split"] == "all" and r["n"] == 2000
    assert 0.6 * 2000 < r["overlap_with_training"] < 0.8 * 2000 and "warning:" in captured.err


def test_gradient_modes_train_alike(tmp_path, run_config):
    a = runs.train_run(run_config(grad="manual", epochs=1), tmp_path / "a", quiet=True)
    b = runs.train_run(run_config(grad="autodiff", epochs=1), tmp_path / "b", quiet=True)
    # The two modes differ by float32 rounding (~1e-7 relative per step, see
    # test_model), which an epoch of SGD amplifies; 0.01 is 8 of the 800 images.
    assert a["best_val_acc"] == pytest.approx(b["best_val_acc"], abs=0.01)


def test_epoch_has_fixed_batch_shape_and_compiles_once():
    cfg = train.StepConfig(spec=model.make_spec((8,)), batch=32)
    n = 100                                        # 100 = 3 * 32 + 4: a ragged tail
    order = train.epoch_order(jax.random.key(0), 0, n, 32)
    assert order.shape == (4 * 32,) and set(np.asarray(order).tolist()) == set(range(n))
    X = jax.random.normal(jax.random.key(1), (n, 20))
    y = jnp.arange(n, dtype=jnp.int32) % 10
    hp = train.Hyper(lr=jnp.float32(1e-3), reg=jnp.float32(0.0))
    state = train.init_state(0, cfg, 20, hp)
    before = train.run_steps._cache_size()
    for epoch in range(3):
        order = train.epoch_order(state.key, epoch, n, 32)
        state, (ce, _) = train.run_steps(state, hp, X, y, order, 0, cfg, 4)
    assert train.run_steps._cache_size() == before + 1
    assert int(state.step) == 12 and np.all(np.isfinite(ce))


def test_divergence_is_recorded_not_a_crash(tmp_path, capsys, svhn_8k_path):
    out = tmp_path / "div"
    code = cli.main(["train", "--data", str(svhn_8k_path), "--out", str(out), "--optimizer", "sgd",
                     "--lr", "1e4", "--hidden", "32", "--epochs", "2", "--batch", "128"])
    assert code == EXIT_DIVERGED
    assert "diverged at step" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged_at_step"] >= 1


def test_existing_out_is_refused_unless_overwrite(tmp_path, run_config):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(SvhnJaxError, match="already exists.*--overwrite"):
        runs.train_run(run_config(epochs=1), out, quiet=True)
    assert (out / "keep.txt").read_text() == "precious"
    runs.train_run(run_config(epochs=1), out, overwrite=True, quiet=True)
    assert (out / "metrics.json").exists()


def test_console_script_trains(tmp_path, svhn_8k_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "svhn_jax.cli", "train", "--data", str(svhn_8k_path), "--out",
                        str(out), "--hidden", "16", "--epochs", "1", "--batch", "256", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["status"] == "completed" and 0 < m["test_acc"] <= 1


def _broken_bn_backward(params, cache, dy):
    """BatchNorm backward that forgets the mean term (a classic derivation slip)."""
    grads = {"gamma": (dy * cache["xhat"]).sum(0), "beta": dy.sum(0)}
    dxhat = dy * params["gamma"]
    return grads, cache["inv_std"] * (dxhat - cache["xhat"] * (dxhat * cache["xhat"]).mean(0))


def test_per_step_check_warns_or_stops_on_a_wrong_backward(tmp_path, monkeypatch, capsys, run_config):
    from svhn_jax.nn import layers

    monkeypatch.setitem(layers.LAYERS, "batchnorm", layers.LAYERS["batchnorm"]._replace(backward=_broken_bn_backward))
    jax.clear_caches()
    cfg = run_config(epochs=1, batchnorm="before", gradcheck_every=10)
    m = runs.train_run(cfg, tmp_path / "warn", quiet=True)
    err = capsys.readouterr().err
    assert "warning: gradient check at step 0" in err and m["gradcheck_max_manual_vs_autodiff"] > 1e-3
    with pytest.raises(SvhnJaxError, match=r"step 0 .*stopping \(--gradcheck-strict\)"):
        runs.train_run(cfg.replace(gradcheck_strict=True), tmp_path / "strict", quiet=True)
    strict = json.loads((tmp_path / "strict" / "metrics.json").read_text())
    assert (strict["status"], strict["gradcheck_failed_at_step"]) == ("gradcheck_failed", 0)
    assert not (tmp_path / "strict" / "best.npz").exists()   # nothing after the failure is kept
    jax.clear_caches()


def _bn_eval_backward_without_inv_std(params, cache, dy):
    """Right in train mode; in eval mode forgets to divide by the running std."""
    from svhn_jax.nn import layers

    grads, dx = layers.batchnorm_backward(params, cache, dy)
    return grads, (dx if cache["train"] else dy * params["gamma"])


def test_the_eval_mode_check_at_each_epochs_end_catches_an_eval_only_bug(tmp_path, monkeypatch, capsys):
    """The per-step checks run the train-mode pass; the eval mode that `evaluate`
    runs (BatchNorm with its running statistics) is checked at every epoch's end,
    before the epoch is evaluated: a bug there alone fails every eval-mode check."""
    from svhn_jax.nn import layers

    monkeypatch.setitem(layers.LAYERS, "batchnorm", layers.LAYERS["batchnorm"]._replace(
        backward=_bn_eval_backward_without_inv_std))
    jax.clear_caches()
    cfg = config.make(data="synthetic", synthetic_n=500, hidden=[8], batchnorm="before", epochs=2, batch=50,
                      gradcheck_every=3, tensorboard=False)
    try:
        m = runs.train_run(cfg, tmp_path / "warn", quiet=True)
        rows = list(csv.DictReader(open(tmp_path / "warn" / "gradchecks.csv")))
        assert [r["mode"] for r in rows].count("eval") == 2 == m["gradchecks_eval"]
        assert all(r["passed"] == ("True" if r["mode"] == "train" else "False") for r in rows)
        assert "warning: gradient check (eval mode) at step 7 (epoch 1)" in capsys.readouterr().err
        with pytest.raises(SvhnJaxError, match=r"\(eval mode\) at step 7 .*stopping \(--gradcheck-strict\)"):
            runs.train_run(cfg.replace(gradcheck_strict=True), tmp_path / "strict", quiet=True)
        strict = json.loads((tmp_path / "strict" / "metrics.json").read_text())
        assert (strict["status"], strict["gradcheck_failed_at_step"]) == ("gradcheck_failed", 7)
        assert not (tmp_path / "strict" / "best.npz").exists()   # the epoch was never evaluated
    finally:
        jax.clear_caches()


def test_every_random_use_of_the_run_key_has_its_own_tag():
    """Two uses sharing a tag would draw the same numbers (the elastic field and the
    dropout masks once did)."""
    assert len(set(train.KEY_TAGS.values())) == len(train.KEY_TAGS)
    key = jax.random.key(0)
    draws = {use: jax.random.key_data(train.drawn_key(key, use, 5)).tolist() for use in train.KEY_TAGS}
    assert len({str(d) for d in draws.values()}) == len(draws)

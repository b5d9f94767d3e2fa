"""Dropout (--dropout on every hidden block, --input-dropout on the input): inverted
dropout whose mask is drawn from the run's key, the step, the layer and each row's
global index, so the hand backward, jax.grad, the finite differences and the
per-step check all see the mask the update used. With both rates 0 the network has
no dropout layer and the program is the one without the setting (the mission's
params_sha256 is unchanged). The 4-device cells are in test_compose_devices.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax import cli, config
from svhn_jax.nn import gradcheck, layers, model, schedules, stepcheck
from svhn_jax.step import settings, train
from svhn_jax.tune import sweep

RATE = 0.3


def _np_keep(key, rate, n, d, first=0):
    """The mask written out from the raw random words: row r keeps entry j where
    (bits >> 8) / 2^24 >= rate, bits the 32-bit words of fold_in(key, r)."""
    rows = [np.asarray(jax.random.bits(jax.random.fold_in(key, first + r), (d,), jnp.uint32)) for r in range(n)]
    return np.stack([(b >> 8).astype(np.float64) / 2.0 ** 24 >= rate for b in rows])


def test_forward_backward_and_mask_match_numpy():
    rng, key = np.random.default_rng(3), jax.random.key(7)
    x, dy = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
    keep = _np_keep(key, RATE, 40, 30)
    with jax.enable_x64(True):
        y, state, cache = layers.dropout_forward({}, {}, jnp.asarray(x), train=True, key=key, rate=RATE)
        _, dx = layers.dropout_backward({}, cache, jnp.asarray(dy))
        y_eval, _, c_eval = layers.dropout_forward({}, {}, jnp.asarray(x), train=False, key=key, rate=RATE)
    np.testing.assert_allclose(y, np.where(keep, x / (1 - RATE), 0.0), rtol=1e-15, atol=0)
    np.testing.assert_allclose(dx, np.where(keep, dy / (1 - RATE), 0.0), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(y_eval, x)            # identity in evaluation
    assert c_eval is None and state == {}
    kept = keep.mean()                                   # 1,200 draws: within 4 standard deviations
    assert abs(kept - (1 - RATE)) < 4 * np.sqrt(RATE * (1 - RATE) / keep.size)
    # a row's mask depends on its global index only: rows 20..39 on their own device
    second = layers.dropout_keep(key, RATE, (20, 30))
    np.testing.assert_array_equal(_np_keep(key, RATE, 20, 30, first=20), keep[20:])
    assert not np.array_equal(np.asarray(second), keep[20:])


def test_the_mask_is_the_same_in_float32_and_float64():
    key = jax.random.key(1)
    m32 = layers.dropout_keep(key, jnp.float32(RATE), (8, 50))
    with jax.enable_x64(True):
        m64 = layers.dropout_keep(key, jnp.float64(RATE), (8, 50))
    np.testing.assert_array_equal(m32, m64)


@pytest.mark.parametrize("name", ["dropout", "input_dropout"])
def test_hand_backward_vs_jax_grad_vs_finite_differences(name):
    for train_mode in (True, False):
        r = gradcheck.check_layer(name, rate=RATE, train=train_mode, batch=6, in_dim=5)
        gradcheck.assert_ok(r)
        assert r["max_rel_error_manual_vs_finite_diff"] <= gradcheck.TOL_FINITE_DIFF


def test_the_model_check_sees_every_mask_and_catches_a_wrong_one(monkeypatch):
    spec = model.make_spec((6, 5), batchnorm="before", rates=("input_dropout", "dropout"))
    assert [n for n, _ in spec][:5] == ["input_dropout", "dense", "batchnorm", "relu", "dropout"]
    rates = {"input_dropout": 0.2, "dropout": 0.4}
    r = gradcheck.check_model(spec, in_dim=7, batch=6, rates=rates)
    assert r["ok"] and r["check"].endswith("input_dropout=0.2 dropout=0.4 (train), L2=0.1")
    # the backward of the neighbouring row's mask: what a device-local row index would give
    shifted = lambda p, cache, dy: ({}, dy if cache is None else dy * jnp.roll(cache, 1, axis=0))
    monkeypatch.setitem(layers.LAYERS, "dropout", layers.LAYERS["dropout"]._replace(backward=shifted))
    r = gradcheck.check_model(spec, in_dim=7, batch=6, rates=rates)
    assert not r["ok"] and any("0.dense" not in f and "1.dense.W" in f for f in r["failures"])


def test_gradcheck_command_with_dropout(capsys):
    args = ["gradcheck", "--hidden", "6", "--in-dim", "5", "--batch", "6", "--fd-samples", "0", "--activation",
            "tanh", "--placement", "none", "--dropout", "0.3", "--input-dropout", "0.1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for title in ("dropout (train mode)", "dropout (eval mode)", "input_dropout (train mode)",
                  "model 5-6-10 input_dropout-dense-tanh-dropout input_dropout=0.1 dropout=0.3 (train)"):
        assert f"ok     {title}" in out
    assert cli.main(args[:-4] + ["--dropout", "1.0"]) == 2


# ------------------------------------------------------------- in training

N, BATCH, IN_DIM = 128, 16, 1024
HP = train.Hyper(lr=jnp.float32(3e-3), reg=jnp.float32(1e-3), dropout=jnp.float32(RATE),
                 input_dropout=jnp.float32(0.1))


def _run(monkeypatch=None, backward=None, grad_mode="manual", steps=4):
    if backward is not None:
        monkeypatch.setitem(layers.LAYERS, "dropout", layers.LAYERS["dropout"]._replace(backward=backward))
    cfg = train.check_config(train.StepConfig(
        model.make_spec((16,), rates=("input_dropout", "dropout")), "adam",
        schedules.ScheduleSpec("constant", total_steps=100), BATCH, grad_mode, check_every=1))
    rng = np.random.default_rng(0)
    X, y = jnp.asarray(rng.normal(size=(N, IN_DIM)), jnp.float32), jnp.asarray(rng.integers(0, 10, N), jnp.int32)
    state = train.init_state(0, cfg, IN_DIM, HP)
    state, out = train.run_steps(state, HP, X, y, train.epoch_order(state.key, 0, N, BATCH), 0, cfg, steps)
    return state, stepcheck.records(out[2], 1)


def test_the_per_step_check_passes_on_a_dropout_run_in_both_modes():
    for mode in ("manual", "autodiff"):
        _, rows = _run(grad_mode=mode)
        assert len(rows) == 4 and all(r["passed"] and r["smooth"] for r in rows), rows


def test_the_per_step_check_catches_a_backward_that_uses_another_mask(monkeypatch):
    """The backward of the neighbouring row's mask (a row index off by one, as a
    device-local index would be on a mesh) fails every checked step."""
    shifted = lambda p, cache, dy: ({}, dy if cache is None else dy * jnp.roll(cache, 1, axis=0))
    train.run_steps.clear_cache()   # a compiled step was traced with the correct backward
    try:
        _, rows = _run(monkeypatch, shifted)
    finally:
        train.run_steps.clear_cache()
    assert len(rows) == 4 and not any(r["passed"] for r in rows)
    assert all(r["manual_vs_autodiff"] > 1e-3 for r in rows)


def test_dropout_off_puts_nothing_in_the_program():
    c = config.make(data="synthetic", hidden=(8,))
    assert settings.spec(c) == model.make_spec((8,))
    assert settings.hyper(c).dropout is None and settings.hyper(c).input_dropout is None
    assert train.noise_key(train.init_state(0, settings.step_config(c, 10), 4, settings.hyper(c)),
                           settings.step_config(c, 10)) is None
    d = c.replace(dropout=0.5)
    assert [n for n, _ in settings.spec(d)] == ["dense", "relu", "dropout", "dense"]
    assert float(settings.hyper(d).dropout) == 0.5 and settings.hyper(d).input_dropout is None
    plain, dropped = model.make_spec((4,)), model.make_spec((4,), rates=("dropout",))
    batch = (jnp.ones((2, 3)), jnp.zeros(2, jnp.int32))
    with pytest.raises(Exception, match="a rate for dropout, which this network does not have"):
        model.loss(*model.init(jax.random.key(0), plain, 3), *batch, plain, key=jax.random.key(0), dropout=0.5)
    with pytest.raises(Exception, match="train with a rate each and a PRNG key: pass key= and dropout="):
        model.loss(*model.init(jax.random.key(0), dropped, 3), *batch, dropped, key=jax.random.key(0))


def test_sweeps_vmap_rates_and_split_groups_by_network(tmp_path):
    base = config.make(data="synthetic", synthetic_n=200, hidden=(8,), batch=32, epochs=1, tensorboard=False)
    plan = [base.replace(dropout=p, activation=a) for p in (0.0, 0.2, 0.4) for a in ("relu", "tanh")]
    groups = {}
    for c in plan:
        groups.setdefault(sweep._group_key(c), []).append((c.dropout, c.activation))
    assert sorted(groups.values()) == [[(0.0, "relu")], [(0.0, "tanh")], [(0.2, "relu"), (0.4, "relu")],
                                       [(0.2, "tanh"), (0.4, "tanh")]]
    s = sweep.sweep(base.replace(activation="tanh"), {"dropout": [0.2, 0.4]}, tmp_path / "sw", final=False,
                    quiet=True)
    assert s["groups"] == 1 and s["configurations"] == 2
    losses = [r["final_val_loss"] for r in s["results"]]
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)

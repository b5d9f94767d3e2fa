"""Whole-model gradient checks, the per-step check, and proof that the checks can fail.

Tolerances: hand vs jax.grad <= 1e-10, hand vs finite differences <= 1e-6
(float64 relative errors, see svhn_jax.gradcheck.rel_error).
"""

import jax
import jax.numpy as jnp
import pytest

from svhn_jax.nn import gradcheck, layers, model, stepcheck

TOL_AUTODIFF = 1e-10
TOL_FD = 1e-6


@pytest.mark.parametrize("hidden,bn,train", [
    ((16,), "none", True),
    ((16, 8), "none", True),
    ((16, 8), "before", True),
    ((16, 8), "before", False),
    ((16, 8), "after", True),
    ((), "none", True),            # softmax regression: any depth, even none
])
def test_model_three_way_with_l2(hidden, bn, train):
    spec = model.make_spec(hidden, batchnorm=bn)
    r = gradcheck.check_model(spec, in_dim=12, batch=8, reg=0.1, train=train, seed=1)
    assert r["max_rel_error_manual_vs_autodiff"] <= TOL_AUTODIFF, r
    assert r["max_rel_error_manual_vs_finite_diff"] <= TOL_FD, r
    assert r["ok"]


def test_model_check_at_full_input_width_with_sampled_entries():
    spec = model.make_spec((32,), batchnorm="before")
    r = gradcheck.check_model(spec, in_dim=3072, batch=4, reg=0.05, fd_samples=10, seed=2)
    assert r["max_rel_error_manual_vs_autodiff"] <= TOL_AUTODIFF
    assert r["max_rel_error_manual_vs_finite_diff"] <= TOL_FD
    assert r["leaves"][0]["fd_entries"] == 10


def sign_flipped_dense_backward(params, cache, dy):
    grads, dx = layers.dense_backward(params, cache, dy)
    return {**grads, "W": -grads["W"]}, dx


def bn_backward_missing_mean_term(params, cache, dy):
    """A classic mistake: forgetting that the batch mean depends on x."""
    grads = {"gamma": (dy * cache["xhat"]).sum(0), "beta": dy.sum(0)}
    dxhat = dy * params["gamma"]
    xhat = cache["xhat"]
    return grads, cache["inv_std"] * (dxhat - xhat * (dxhat * xhat).mean(0))


def test_sign_flip_is_caught():
    r = gradcheck.check_layer("dense", backward=sign_flipped_dense_backward)
    assert not r["ok"]
    assert r["max_rel_error_manual_vs_autodiff"] > 0.5
    with pytest.raises(gradcheck.GradCheckError, match=r"dense\.W: hand-written gradient differs from jax\.grad"):
        gradcheck.assert_ok(r)
    # the references agree with each other, so the culprit is the hand code
    assert r["max_rel_error_autodiff_vs_finite_diff"] <= TOL_FD


def test_missing_batchnorm_term_is_caught_per_layer_and_in_the_model(monkeypatch):
    r = gradcheck.check_layer("batchnorm", backward=bn_backward_missing_mean_term)
    assert not r["ok"]
    assert any(f.startswith("x: hand-written gradient differs from finite differences") for f in r["failures"])

    init, fwd, _ = layers.LAYERS["batchnorm"]
    monkeypatch.setitem(layers.LAYERS, "batchnorm", layers.Layer(init, fwd, bn_backward_missing_mean_term))
    spec = model.make_spec((8, 6), batchnorm="before")
    r = gradcheck.check_model(spec, in_dim=5, batch=6)
    assert not r["ok"]
    # BN's own gamma/beta are still right; everything below the first BN is wrong
    failed = {f.split(":")[0] for f in r["failures"]}
    assert "0.dense.W" in failed and "5.batchnorm.gamma" not in failed


def test_step_check_passes_on_the_real_backward_and_fails_on_a_broken_one(monkeypatch):
    spec = model.make_spec((16,), batchnorm="before")
    params, state = model.init(jax.random.key(0), spec, 20)
    x = jax.random.normal(jax.random.key(1), (8, 20))
    y = jnp.arange(8) % 10
    good = stepcheck.step_check(params, state, x, y, spec, 1e-3, jax.random.key(2))
    assert good["manual_vs_autodiff"] <= TOL_AUTODIFF
    assert good["directional_fd"] <= TOL_FD and good["smooth"]
    # a step far too large for the loss's curvature (and its ReLU kinks) is flagged
    coarse = stepcheck.step_check(params, state, x, y, spec, 1e-3, jax.random.key(2), eps=0.3)
    assert not coarse["smooth"]

    init, fwd, _ = layers.LAYERS["batchnorm"]
    monkeypatch.setitem(layers.LAYERS, "batchnorm", layers.Layer(init, fwd, bn_backward_missing_mean_term))
    jax.clear_caches()  # the jitted check was traced with the correct backward
    bad = stepcheck.step_check(params, state, x, y, spec, 1e-3, jax.random.key(2))
    assert bad["manual_vs_autodiff"] > 1e-3
    assert bad["directional_fd"] > 1e-4 and bad["smooth"]   # a real failure, at a smooth point
    jax.clear_caches()


def test_a_nan_gradient_fails_the_checks(monkeypatch):
    nan_backward = lambda params, cache, dy: jax.tree.map(lambda a: a * jnp.nan,
                                                          layers.dense_backward(params, cache, dy))
    r = gradcheck.check_layer("dense", backward=nan_backward)
    assert not r["ok"] and any("dense.W" in f for f in r["failures"])
    init, fwd, _ = layers.LAYERS["dense"]
    monkeypatch.setitem(layers.LAYERS, "dense", layers.Layer(init, fwd, nan_backward))
    jax.clear_caches()
    spec = model.make_spec((8,))
    params, state = model.init(jax.random.key(0), spec, 6)
    x, y = jax.random.normal(jax.random.key(1), (4, 6)), jnp.arange(4)
    r = stepcheck.step_check(params, state, x, y, spec, 0.0, jax.random.key(2))
    assert not r["manual_vs_autodiff"] <= 1e-10     # NaN: never "within tolerance"
    jax.clear_caches()

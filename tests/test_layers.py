"""Each layer's hand-written backward vs jax.grad vs finite differences, float64.

Tolerances (stated once, used everywhere): hand vs jax.grad <= 1e-10 relative
error (both are exact, so this is rounding), hand vs central differences
<= 1e-6 (truncation and rounding of the difference quotient).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from svhn_jax.nn import gradcheck, layers, losses
from svhn_jax.errors import SvhnJaxError

TOL_AUTODIFF = 1e-10
TOL_FD = 1e-6


def assert_report_within(report):
    assert report["max_rel_error_manual_vs_autodiff"] <= TOL_AUTODIFF, report
    assert report["max_rel_error_manual_vs_finite_diff"] <= TOL_FD, report
    assert report["ok"], report["failures"]


@pytest.mark.parametrize("layer,train", [("dense", True), ("relu", True),
                                         ("batchnorm", True), ("batchnorm", False)])
def test_layer_three_way(layer, train):
    assert_report_within(gradcheck.check_layer(layer, batch=8, in_dim=7, out_dim=5, train=train, seed=3))


def test_loss_three_way():
    assert_report_within(gradcheck.check_loss(batch=9, seed=4))


@settings(max_examples=5, deadline=None)
@given(batch=st.integers(2, 12), in_dim=st.integers(1, 9), out_dim=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_dense_property(batch, in_dim, out_dim, seed):
    assert_report_within(gradcheck.check_layer("dense", batch=batch, in_dim=in_dim, out_dim=out_dim, seed=seed))


@settings(max_examples=5, deadline=None)
@given(batch=st.integers(2, 12), dim=st.integers(1, 9), train=st.booleans(), seed=st.integers(0, 2**16))
def test_batchnorm_property(batch, dim, train, seed):
    assert_report_within(gradcheck.check_layer("batchnorm", batch=batch, in_dim=dim, train=train, seed=seed))


@settings(max_examples=4, deadline=None)
@given(batch=st.integers(1, 12), dim=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_relu_property(batch, dim, seed):
    assert_report_within(gradcheck.check_layer("relu", batch=batch, in_dim=dim, seed=seed))


def test_batchnorm_backward_is_not_degenerate():
    """With a random upstream gradient the BN input gradient is far from zero
    (an all-ones dy would make it exactly zero and hide bugs)."""
    with jax.enable_x64(True):
        params, state, _ = layers.batchnorm_init(None, 4, jnp.float64)
        x = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
        _, _, cache = layers.batchnorm_forward(params, state, x, train=True)
        _, dx_ones = layers.batchnorm_backward(params, cache, jnp.ones((6, 4)))
        _, dx_rand = layers.batchnorm_backward(params, cache, jax.random.normal(jax.random.key(1), (6, 4)))
        assert float(jnp.max(jnp.abs(dx_ones))) < 1e-12
        assert float(jnp.max(jnp.abs(dx_rand))) > 1e-2


def test_batchnorm_running_statistics_and_eval_mode():
    with jax.enable_x64(True):
        params = {"gamma": jnp.array([2.0, 0.5]), "beta": jnp.array([0.3, -1.0])}
        state = {"mean": jnp.array([1.0, -1.0]), "var": jnp.array([4.0, 0.25])}
        x = jnp.array([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
        y, new, _ = layers.batchnorm_forward(params, state, x, train=True)
        mu, var = x.mean(0), x.var(0)  # biased variance
        np.testing.assert_allclose(new["mean"], 0.9 * state["mean"] + 0.1 * mu, rtol=1e-14)
        np.testing.assert_allclose(new["var"], 0.9 * state["var"] + 0.1 * var, rtol=1e-14)
        np.testing.assert_allclose(y, params["gamma"] * (x - mu) / np.sqrt(var + 1e-5) + params["beta"],
                                   rtol=1e-12)
        y_eval, same, _ = layers.batchnorm_forward(params, state, x, train=False)
        np.testing.assert_allclose(
            y_eval, params["gamma"] * (x - state["mean"]) / np.sqrt(state["var"] + 1e-5) + params["beta"],
            rtol=1e-12)
        assert same is state


def test_batchnorm_rejects_batch_of_one_in_train_mode():
    params, state, _ = layers.batchnorm_init(None, 3)
    with pytest.raises(SvhnJaxError, match="at least 2 rows"):
        layers.batchnorm_forward(params, state, jnp.ones((1, 3)), train=True)
    layers.batchnorm_forward(params, state, jnp.ones((1, 3)), train=False)  # eval mode is fine


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    with jax.enable_x64(True):
        logits = jnp.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
        labels = jnp.array([1, 2])
        loss, cache = losses.softmax_cross_entropy(logits, labels)
        # row 0: -log softmax_1 = 1e4; row 1: two equal maxima, -log(1/2)
        np.testing.assert_allclose(float(loss), (1e4 + np.log(2)) / 2, rtol=1e-14)
        grad = losses.softmax_cross_entropy_backward(cache)
        np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [0.0, 0.25, -0.25]], atol=1e-15)


def test_l2_excludes_biases_and_batchnorm_by_default():
    params = ({"W": jnp.full((2, 2), 3.0), "b": jnp.ones(2)}, {"gamma": jnp.ones(2), "beta": jnp.ones(2)})
    assert float(losses.l2_penalty(params, 0.5)) == pytest.approx(0.5 * 0.5 * 36)
    g = losses.l2_penalty_grad(params, 0.5)
    np.testing.assert_array_equal(g[0]["W"], 1.5)
    np.testing.assert_array_equal(g[0]["b"], 0.0)
    np.testing.assert_array_equal(g[1]["gamma"], 0.0)
    assert float(losses.l2_penalty(params, 0.5, include=("W", "b"))) == pytest.approx(0.25 * 38)

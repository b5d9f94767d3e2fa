"""Each layer and loss: forward values pinned against NumPy references written here,
and the hand-written backward vs jax.grad vs finite differences, float64.

Tolerances (stated once, used everywhere): hand vs jax.grad <= 1e-10 relative
error (both are exact, so this is rounding), hand vs finite differences
<= 1e-6 (see svhn_jax.nn.gradcheck for the rounding floor). Forward values
agree with NumPy to FWD_RTOL in float64 (only the order of summation differs).

Matrix products run at "highest" precision in every test here: GPUs multiply
float32 (TF32) and sometimes float64 inputs with reduced precision by default,
and these comparisons assume the full precision a CPU gives.
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
FWD_RTOL = 1e-13


@pytest.fixture(autouse=True)
def full_precision_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def assert_report_within(report):
    assert report["max_rel_error_manual_vs_autodiff"] <= TOL_AUTODIFF, report
    assert report["max_rel_error_manual_vs_finite_diff"] <= TOL_FD, report
    assert report["ok"], report["failures"]


@pytest.mark.parametrize("layer,train", [("dense", True), ("relu", True),
                                         ("batchnorm", True), ("batchnorm", False)])
def test_layer_three_way(layer, train):
    assert_report_within(gradcheck.check_layer(layer, batch=8, in_dim=7, out_dim=5, train=train, seed=3))


def test_loss_three_way():
    report = gradcheck.check_loss(batch=9, seed=4)
    assert_report_within(report)
    assert [leaf["name"] for leaf in report["leaves"]] == [
        "softmax_ce.logits", "softmax_ce_smoothed.logits", "l2.W", "l2.b"]
    assert report["leaves"][0]["size"] == report["leaves"][1]["size"] == 90


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


# ------------------------------------------------ forward values vs NumPy


def _mixed(rng, shape):
    """Random float64 entries, negative and positive, with about a fifth exactly 0 (or -0)."""
    x = rng.normal(size=shape) * rng.choice([0.01, 1.0, 100.0], size=shape)
    x[rng.random(shape) < 0.1] = 0.0
    x[rng.random(shape) < 0.1] = -0.0
    return x


@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward_matches_numpy(bias):
    rng = np.random.default_rng(20)
    x, W, b = _mixed(rng, (7, 5)), _mixed(rng, (5, 3)), _mixed(rng, (3,))
    params = {"W": W, "b": b} if bias else {"W": W}
    with jax.enable_x64(True):
        y, state, cache = layers.dense_forward(jax.tree.map(jnp.asarray, params), {}, jnp.asarray(x))
    want = np.einsum("nd,dm->nm", x, W) + (b if bias else 0.0)
    # summation order may differ: bound the error by the size of the terms summed
    np.testing.assert_allclose(y, want, rtol=0, atol=FWD_RTOL * np.max(np.abs(x) @ np.abs(W)))
    assert state == {} and y.dtype == jnp.float64
    np.testing.assert_array_equal(cache, x)


def test_dense_init_shapes_and_scale():
    params, state, out = layers.dense_init(jax.random.key(0), 400, 300)
    assert out == 300 and state == {} and params["W"].shape == (400, 300)
    np.testing.assert_array_equal(params["b"], np.zeros(300, np.float32))
    assert abs(float(params["W"].std()) / np.sqrt(2 / 400) - 1) < 0.02     # He: std sqrt(2 / D)
    assert abs(float(params["W"].mean())) < 0.01 * np.sqrt(2 / 400)
    assert set(layers.dense_init(jax.random.key(0), 4, 3, bias=False)[0]) == {"W"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_forward_and_mask_match_numpy(dtype):
    rng = np.random.default_rng(21)
    x = _mixed(rng, (9, 6)).astype(dtype)
    x[0, :3] = [0.0, -0.0, np.finfo(dtype).tiny]   # zeros and the smallest positive normal
    with jax.enable_x64(True):
        y, state, mask = layers.relu_forward({}, {}, jnp.asarray(x))
        _, dx = layers.relu_backward({}, mask, jnp.ones_like(jnp.asarray(x)))
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0.0))
    assert y.dtype == dtype and state == {}
    assert not np.any(np.asarray(y) < 0) and np.any(x < 0) and np.any(x == 0)
    np.testing.assert_array_equal(mask, x > 0)                  # exactly 0 is "off"
    np.testing.assert_array_equal(dx, (x > 0).astype(dtype))    # derivative at 0 taken as 0
    assert float(y[0, 2]) == np.finfo(dtype).tiny


def _np_batchnorm(x, gamma, beta, mean, var, train, momentum=0.9, eps=1e-5):
    """CS231n batchnorm_forward in float64 NumPy: (y, new_mean, new_var)."""
    if train:
        mu = x.sum(axis=0) / x.shape[0]
        v = ((x - mu) ** 2).sum(axis=0) / x.shape[0]
        return (gamma * (x - mu) / np.sqrt(v + eps) + beta,
                momentum * mean + (1 - momentum) * mu, momentum * var + (1 - momentum) * v)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, var


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("batch", [2, 3, 16])
def test_batchnorm_forward_and_running_statistics_match_numpy(train, batch):
    rng = np.random.default_rng(22 + batch)
    x = _mixed(rng, (batch, 6))
    gamma, beta = rng.normal(1.0, 0.7, 6), rng.normal(0.0, 0.7, 6)
    mean, var = rng.normal(size=6), rng.uniform(0.2, 3.0, 6)
    with jax.enable_x64(True):
        y, new, cache = layers.batchnorm_forward({"gamma": jnp.asarray(gamma), "beta": jnp.asarray(beta)},
                                                 {"mean": jnp.asarray(mean), "var": jnp.asarray(var)},
                                                 jnp.asarray(x), train=train)
    want, want_mean, want_var = _np_batchnorm(x, gamma, beta, mean, var, train)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new["mean"], want_mean, rtol=FWD_RTOL, atol=1e-15)
    np.testing.assert_allclose(new["var"], want_var, rtol=FWD_RTOL)
    assert cache["train"] is train
    if train:   # the statistics moved: a test with unchanged state would not see a broken update
        assert np.max(np.abs(np.asarray(new["mean"]) - mean)) > 1e-3


@pytest.mark.parametrize("mean", [1e2, 1e3])
def test_float32_batchnorm_keeps_its_digits_when_the_mean_dwarfs_the_spread(mean):
    """Inputs of unit spread around a large mean (condition kappa = mean / spread):
    the two-pass variance mean((x - mu)^2) loses only the batch mean's rounding,
    a few float32 roundoffs of |x|, which the normalisation divides by the spread:
    about kappa u. The one-pass mean(x^2) - mu^2 cancels two numbers of size
    mean^2 and loses kappa^2 u (at kappa 1e3, most of the variance)."""
    rng = np.random.default_rng(5)
    x = (mean + rng.normal(size=(64, 6))).astype(np.float32)
    gamma, beta = rng.normal(1.0, 0.7, 6), rng.normal(0.0, 0.7, 6)
    state = {"mean": rng.normal(size=6), "var": rng.uniform(0.2, 3.0, 6)}
    y, new, _ = layers.batchnorm_forward({"gamma": jnp.float32(gamma), "beta": jnp.float32(beta)},
                                         jax.tree.map(jnp.float32, state), jnp.asarray(x), train=True)
    want, want_mean, want_var = _np_batchnorm(x.astype(np.float64), gamma, beta, state["mean"], state["var"], True)
    kappa, u = mean / 1.0, 2.0 ** -24
    assert np.max(np.abs(np.asarray(y) - want)) <= 8 * kappa * u * np.max(np.abs(want))
    np.testing.assert_allclose(new["var"], want_var, rtol=8 * kappa * u)
    np.testing.assert_allclose(new["mean"], want_mean, rtol=8 * u)


def test_batchnorm_defaults_are_the_documented_ones():
    """momentum 0.9 (CS231n), eps 1e-5, init gamma 1, beta 0, running mean 0, var 1."""
    assert (layers.BN_MOMENTUM, layers.BN_EPS) == (0.9, 1e-5)
    rng = np.random.default_rng(23)
    x = 1e-2 * rng.normal(size=(5, 4))       # var ~ 1e-4: eps 1e-5 changes y by a few %
    with jax.enable_x64(True):
        params, state, out = layers.batchnorm_init(None, 4, jnp.float64)
        assert out == 4 and params["gamma"].dtype == jnp.float64
        for leaf, value in [(params["gamma"], 1.0), (params["beta"], 0.0), (state["mean"], 0.0),
                            (state["var"], 1.0)]:
            np.testing.assert_array_equal(leaf, np.full(4, value))
        y, new, _ = layers.batchnorm_forward(params, state, jnp.asarray(x), train=True)
        y2, new2, _ = layers.batchnorm_forward(params, state, jnp.asarray(x), train=True, momentum=0.5, eps=1e-3)
    ones, zeros = np.ones(4), np.zeros(4)
    want, want_mean, want_var = _np_batchnorm(x, ones, zeros, zeros, ones, True, momentum=0.9, eps=1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    np.testing.assert_allclose(new["var"], want_var, rtol=FWD_RTOL)
    want2, _, want_var2 = _np_batchnorm(x, ones, zeros, zeros, ones, True, momentum=0.5, eps=1e-3)
    np.testing.assert_allclose(y2, want2, rtol=1e-12)            # the arguments are used
    np.testing.assert_allclose(new2["var"], want_var2, rtol=FWD_RTOL)
    assert np.max(np.abs(want - want2)) > 0.1


def _np_cross_entropy(z, labels):
    """Mean -log softmax(z)[label] in float64 NumPy, log-sum-exp shifted by the row max."""
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 1e4])
def test_softmax_cross_entropy_matches_numpy(scale):
    rng = np.random.default_rng(24)
    z = _mixed(rng, (11, 10)) * scale
    labels = rng.integers(0, 10, 11)
    with jax.enable_x64(True):
        loss, cache = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels))
        log_probs = cache[0]
        grad = losses.softmax_cross_entropy_backward(cache)
    assert float(loss) == pytest.approx(_np_cross_entropy(z, labels), rel=1e-12)
    m = z.max(axis=1, keepdims=True)
    want_log_probs = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_probs, want_log_probs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, (np.exp(want_log_probs) - np.eye(10)[labels]) / 11, rtol=1e-10, atol=1e-15)


def _np_smoothed_cross_entropy(z, labels, s):
    """Independent float64 reference: targets (1 - s) onehot + s / K, the mean over rows of
    -sum_k q_k log softmax(z)_k, and its gradient (softmax - q) / N."""
    n, k = z.shape
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    q = (1 - s) * np.eye(k)[labels] + s / k
    return float(-np.mean(np.sum(q * log_p, axis=1))), (np.exp(log_p) - q) / n


@pytest.mark.parametrize("smoothing", [0.05, 0.3, 0.9])
def test_label_smoothing_matches_numpy_jax_grad_and_finite_differences(smoothing):
    rng = np.random.default_rng(27)
    z = _mixed(rng, (9, 10)) * 3.0
    labels = rng.integers(0, 10, 9)
    want_loss, want_grad = _np_smoothed_cross_entropy(z, labels, smoothing)
    with jax.enable_x64(True):
        f = lambda z: losses.softmax_cross_entropy(z, jnp.asarray(labels), smoothing)[0]
        loss, cache = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels), smoothing)
        hand = np.asarray(losses.softmax_cross_entropy_backward(cache))
        auto = np.asarray(jax.grad(f)(jnp.asarray(z)))
        h, fd = 1e-6, np.zeros_like(z)
        for i, j in np.ndindex(*z.shape):
            e = np.zeros_like(z)
            e[i, j] = h
            fd[i, j] = (float(f(jnp.asarray(z + e))) - float(f(jnp.asarray(z - e)))) / (2 * h)
    assert float(loss) == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(hand, want_grad, rtol=1e-10, atol=1e-15)
    assert gradcheck.rel_error(hand, auto) <= gradcheck.TOL_AUTODIFF
    assert gradcheck.rel_error(hand, fd) <= gradcheck.TOL_FINITE_DIFF
    # smoothing is what makes the difference: the plain gradient is far from it
    assert gradcheck.rel_error(hand, _np_smoothed_cross_entropy(z, labels, 0.0)[1]) > 1e-2


def test_no_smoothing_is_the_plain_cross_entropy_to_the_last_bit():
    z = np.random.default_rng(28).normal(size=(7, 10)).astype(np.float32) * 5
    labels = jnp.asarray(np.arange(7) % 10)
    plain = jax.jit(lambda z: losses.softmax_cross_entropy(z, labels))
    traced = jax.jit(lambda z, s: losses.softmax_cross_entropy(z, labels, s))
    (a, ca), (b, cb) = plain(z), traced(z, jnp.float32(0.0))
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    ga = losses.softmax_cross_entropy_backward(ca)
    gb = losses.softmax_cross_entropy_backward(cb)
    assert np.asarray(ga).tobytes() == np.asarray(gb).tobytes()


def test_softmax_cross_entropy_float32_large_logits_stay_finite():
    z = np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 0.0], [-80.0, 0.0, 80.0]], np.float32)
    labels = np.array([0, 1, 1])
    loss, cache = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels))
    grad = losses.softmax_cross_entropy_backward(cache)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
    # rows: -log 1 = 0, -log 1/2, 80 + log(1 + e^-80 + e^-160) = 80
    assert float(loss) == pytest.approx((0.0 + np.log(2) + 80.0) / 3, rel=1e-6)
    assert np.all(np.isfinite(grad))


def test_l2_penalty_matches_numpy_and_regularises_only_the_named_leaves():
    rng = np.random.default_rng(25)
    params = ({"W": _mixed(rng, (4, 3)), "b": _mixed(rng, (3,))},
              {"gamma": rng.normal(size=3), "beta": rng.normal(size=3)}, {},
              {"W": _mixed(rng, (3, 2)), "b": _mixed(rng, (2,))})
    sq = lambda keys: sum(float(np.sum(p[k] ** 2)) for p in params for k in keys if k in p)
    with jax.enable_x64(True):
        tree = jax.tree.map(jnp.asarray, params)
        assert float(losses.l2_penalty(tree, 0.3)) == pytest.approx(0.5 * 0.3 * sq(["W"]), rel=1e-14)
        assert float(losses.l2_penalty(tree, 0.3, include=("W", "b", "gamma"))) == \
            pytest.approx(0.5 * 0.3 * sq(["W", "b", "gamma"]), rel=1e-14)
        assert float(losses.l2_penalty(tree, 0.0)) == 0.0
        grads = losses.l2_penalty_grad(tree, 0.3)
    for p, g in zip(params, grads):
        assert set(g) == set(p)
        for k in p:
            np.testing.assert_array_equal(g[k], 0.3 * p[k] if k == "W" else np.zeros_like(p[k]))
    assert losses.l2_penalty(({"W": jnp.ones(2, jnp.float32)},), 1.0).dtype == jnp.float32

"""Every activation of the registry: forward and hand backward against NumPy written
here, hand VJP vs jax.grad vs finite differences in float64, a wrong backward
caught, and the per-step check's rule for kinks (a finite difference across one is
set aside; a smooth activation's never is)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.nn import gradcheck, layers, model, stepcheck

# y(x) and dy/dx, independent of the package (the slope of LeakyReLU is its documented 0.01)
NUMPY = {
    "relu": (lambda x: np.where(x > 0, x, 0.0), lambda x: (x > 0).astype(float)),
    "leaky_relu": (lambda x: np.where(x > 0, x, 0.01 * x), lambda x: np.where(x > 0, 1.0, 0.01)),
    "tanh": (np.tanh, lambda x: 1.0 / np.cosh(x) ** 2),
}


def test_every_activation_has_a_reference_here():
    assert set(layers.activations()) == set(NUMPY)


def _mixed(rng, shape):
    """Signed values over four decades, with exact zeros of both signs."""
    x = rng.normal(size=shape) * rng.choice([0.01, 1.0, 100.0], size=shape)
    x[rng.random(shape) < 0.1] = 0.0
    x[rng.random(shape) < 0.1] = -0.0
    return x


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_forward_and_backward_match_numpy(name):
    f, df = NUMPY[name]
    rng = np.random.default_rng(5)
    x, dy = _mixed(rng, (7, 6)), rng.normal(size=(7, 6))
    layer = layers.LAYERS[name]
    with jax.enable_x64(True):
        p, s, width = layer.init(None, 6, 6, jnp.float64, True)
        y, new, cache = layer.forward(p, s, jnp.asarray(x), train=True)
        grads, dx = layer.backward(p, cache, jnp.asarray(dy))
    assert (p, s, new, grads, width) == ({}, {}, {}, {}, 6)
    np.testing.assert_allclose(y, f(x), rtol=1e-15, atol=0)
    # tanh's 1 - y^2 keeps absolute digits only where y is near +-1 (its relative digits go)
    np.testing.assert_allclose(dx, df(x) * dy, rtol=1e-15, atol=1e-15)
    y_eval = layer.forward(p, s, jnp.asarray(x, jnp.float32), train=False)[0]
    np.testing.assert_allclose(y_eval, f(x.astype(np.float32)), rtol=1e-6)   # the same in eval mode


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_hand_backward_vs_jax_grad_vs_finite_differences(name):
    for seed in range(2):
        r = gradcheck.check_layer(name, seed=seed, batch=5, in_dim=4)
        gradcheck.assert_ok(r)
        assert r["max_rel_error_manual_vs_autodiff"] <= gradcheck.TOL_AUTODIFF
        assert r["max_rel_error_manual_vs_finite_diff"] <= gradcheck.TOL_FINITE_DIFF


def test_a_leaky_relu_backward_without_its_slope_is_caught():
    r = gradcheck.check_layer("leaky_relu", backward=layers.relu_backward, batch=5, in_dim=4)
    assert not r["ok"]
    assert any(f.startswith("x: hand-written gradient differs from jax.grad") for f in r["failures"])


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_the_per_step_check_sets_a_difference_aside_only_across_a_kink(name):
    """Unit 0 of the hidden layer sits half a step from 0 for the first image: the
    two ends of the difference straddle it. Across a kink (ReLU, LeakyReLU) the
    difference is set aside; a smooth activation's difference still counts, and
    agrees with the hand gradient."""
    spec = model.make_spec((8,), activation=name)
    params, state = model.init(jax.random.key(0), spec, 12)
    x, y = jax.random.normal(jax.random.key(1), (6, 12)), jnp.arange(6) % 10
    eps, v = 1e-3, stepcheck.direction(jax.random.key(0), params)
    pre = lambda p: model.forward(p[:1], state[:1], x, spec[:1], train=True)[0][0, 0]
    at, along = jax.jvp(pre, (params,), (v,))
    params = (dict(params[0], b=params[0]["b"].at[0].add(0.5 * eps * abs(along) - at)),) + params[1:]
    c = jax.jit(lambda: stepcheck.check(params, state, x, y, 0.0, jax.random.key(0), spec, "manual", eps=eps))()
    assert bool(c.smooth) == (layers.LAYERS[name].kinks is None)
    assert float(c.manual_vs_autodiff) <= stepcheck.tolerance()
    if bool(c.smooth):
        assert float(c.directional_fd) <= stepcheck.tolerance()

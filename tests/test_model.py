"""The model: both gradient modes under jit, clear errors, and overfitting real digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.data import preprocess
from svhn_jax.nn import model, optim
from svhn_jax.errors import SvhnJaxError


def _batch(n=16, d=20, seed=0, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(seed), (n, d), dtype)
    return x, jnp.arange(n) % 10


@pytest.mark.parametrize("bn", ["none", "before", "after"])
def test_both_gradient_modes_agree_under_jit(bn):
    spec = model.make_spec((32, 16), batchnorm=bn)
    params, state = model.init(jax.random.key(0), spec, 20)
    x, y = _batch()
    outs = {mode: jax.jit(fn, static_argnames=("spec", "train"))(params, state, x, y, spec, 1e-3)
            for mode, fn in model.GRAD_MODES.items()}
    (lm, gm, sm, _), (la, ga, sa, _) = outs["manual"], outs["autodiff"]
    np.testing.assert_allclose(lm, la, rtol=1e-6)
    for a, b in zip(jax.tree.leaves((gm, sm)), jax.tree.leaves((ga, sa))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(gm))


def test_float64_modes_agree_to_rounding():
    with jax.enable_x64(True):
        spec = model.make_spec((12, 7), batchnorm="before")
        params, state = model.init(jax.random.key(1), spec, 9, jnp.float64)
        x, y = _batch(10, 9, 1, jnp.float64)
        _, gm, _, _ = model.loss_and_grads_manual(params, state, x, y, spec, 0.2)
        _, ga, _, _ = model.loss_and_grads_autodiff(params, state, x, y, spec, 0.2)
        for a, b in zip(jax.tree.leaves(gm), jax.tree.leaves(ga)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_spec_layouts():
    assert [n for n, _ in model.make_spec((8,))] == ["dense", "relu", "dense"]
    assert [n for n, _ in model.make_spec((8,), batchnorm="before")] == ["dense", "batchnorm", "relu", "dense"]
    assert [n for n, _ in model.make_spec((8,), batchnorm="after")] == ["dense", "relu", "batchnorm", "dense"]
    params, _ = model.init(jax.random.key(0), model.make_spec((8,), batchnorm="before"), 5)
    assert set(params[0]) == {"W"}                 # no bias right before BatchNorm
    params, _ = model.init(jax.random.key(0), model.make_spec((8,), batchnorm="after"), 5)
    assert set(params[0]) == {"W", "b"}
    w = model.init(jax.random.key(0), model.make_spec((256,)), 3072)[0][0]["W"]
    assert abs(float(w.std()) - np.sqrt(2 / 3072)) < 0.05 * np.sqrt(2 / 3072)  # He init


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden=(0,)), "positive integers"),
    (dict(batchnorm="middle"), "batchnorm must be one of"),
])
def test_bad_spec(kwargs, match):
    with pytest.raises(SvhnJaxError, match=match):
        model.make_spec(**kwargs)


def test_bad_inputs_get_clear_errors():
    spec = model.make_spec((8,))
    params, state = model.init(jax.random.key(0), spec, 20)
    x, y = _batch()
    cases = [
        ((x[:, :19], y), r"x must have shape \(N, 20\)"),
        ((x.astype(jnp.int32), y), "floating-point"),
        ((x, y[:15]), r"labels must have shape \(16,\)"),
        ((x, y.astype(jnp.float32)), "labels must be integers"),
        ((x, y + 1), r"labels must lie in \[0, 10\), got values from 1 to 10"),
        ((x, y - 1), r"got values from -1 to 8"),
    ]
    for (xb, yb), match in cases:
        for fn in model.GRAD_MODES.values():
            with pytest.raises(SvhnJaxError, match=match):
                fn(params, state, xb, yb, spec)
    bn_spec = model.make_spec((8,), batchnorm="before")
    p, s = model.init(jax.random.key(0), bn_spec, 20)
    with pytest.raises(SvhnJaxError, match="at least 2 rows"):
        model.loss_and_grads_manual(p, s, x[:1], y[:1], bn_spec)


@pytest.mark.parametrize("name,lr", [("sgd", 0.1), ("momentum", 0.02), ("nesterov", 0.02),
                                     ("rmsprop", 1e-3), ("adam", 1e-3)])
def test_overfits_32_real_images(svhn_8k, name, lr):
    """Each optimizer drives 32 real SVHN digits to 100% training accuracy."""
    X, y = svhn_8k
    X, y = X[:32], y[:32]
    x = jnp.asarray(preprocess.apply(X, preprocess.fit(X, mode="image")))
    y = jnp.asarray(y, jnp.int32)
    spec = model.make_spec((64,))
    params, state = model.init(jax.random.key(0), spec, x.shape[1])
    opt = optim.get(name, lr)

    @jax.jit
    def steps(params, opt_state):
        def body(carry, _):
            p, o = carry
            _, g, _, _ = model.loss_and_grads_manual(p, state, x, y, spec, 0.0)
            return opt.update(g, o, p), None
        return jax.lax.scan(body, (params, opt_state), None, length=50)[0]

    opt_state = opt.init(params)
    for _ in range(6):  # at most 300 full-batch steps
        params, opt_state = steps(params, opt_state)
        acc = float(jnp.mean(model.predict(params, state, x, spec) == y))
        if acc == 1.0:
            break
    assert acc == 1.0, f"{name} reached only {acc:.0%} training accuracy"

"""The model: forward values against NumPy, both gradient modes under jit, clear
errors, the smallest legal BatchNorm batch, and overfitting real digits.

Matrix products run at "highest" precision in every test here: GPUs multiply
float32 (TF32) and sometimes float64 inputs with reduced precision by default,
and the float32 comparisons below (rtol ~1e-5) assume the full precision a CPU
gives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.data import preprocess
from svhn_jax.nn import model, optim
from svhn_jax.errors import SvhnJaxError


@pytest.fixture(autouse=True)
def full_precision_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


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
        _, gm, _, _ = jax.jit(model.loss_and_grads_manual, static_argnums=4)(params, state, x, y, spec, 0.2)
        _, ga, _, _ = jax.jit(model.loss_and_grads_autodiff, static_argnums=4)(params, state, x, y, spec, 0.2)
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


def _np_forward(params, state, x, spec, train, eps=1e-5, momentum=0.9):
    """The whole MLP in float64 NumPy, written from the layer formulas: (logits, new state)."""
    new_state = []
    for (name, _), p, s in zip(spec, params, state):
        p, s = {k: np.asarray(v) for k, v in p.items()}, {k: np.asarray(v) for k, v in s.items()}
        if name == "dense":
            x = x @ p["W"] + p.get("b", 0.0)
        elif name == "relu":
            x = np.maximum(x, 0.0)
        else:
            mu, var = (x.mean(0), x.var(0)) if train else (s["mean"], s["var"])
            if train:
                s = {"mean": momentum * s["mean"] + (1 - momentum) * mu,
                     "var": momentum * s["var"] + (1 - momentum) * var}
            x = p["gamma"] * (x - mu) / np.sqrt(var + eps) + p["beta"]
        new_state.append(s)
    return x, new_state


@pytest.mark.parametrize("bn,train", [("none", True), ("before", True), ("before", False), ("after", True)])
def test_forward_and_loss_match_numpy(bn, train):
    spec = model.make_spec((7, 5), batchnorm=bn)
    rng = np.random.default_rng(30)
    with jax.enable_x64(True):
        params, state = model.init(jax.random.key(3), spec, 6, jnp.float64)
        params = jax.tree.map(lambda a: jnp.asarray(a + 0.3 * rng.normal(size=a.shape)), params)
        state = jax.tree.map(lambda a: jnp.asarray(a + rng.uniform(0.1, 0.5, size=a.shape)), state)
        x = rng.normal(size=(9, 6))
        x[0, :2] = 0.0
        y = rng.integers(0, 10, 9)
        logits, new_state, _ = model.forward(params, state, jnp.asarray(x), spec, train=train)
        value, (loss_state, loss_logits) = model.loss(params, state, jnp.asarray(x), jnp.asarray(y), spec, 0.2,
                                                      train=train)
        predicted = model.predict(params, state, jnp.asarray(x), spec)
    want, want_state = _np_forward(params, state, x, spec, train)
    np.testing.assert_allclose(logits, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss_logits, want, rtol=1e-12, atol=1e-12)
    for got, ref in zip(new_state, want_state):
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-13)
    m = want.max(1, keepdims=True)
    ce = np.mean(m[:, 0] + np.log(np.exp(want - m).sum(1)) - want[np.arange(9), y])
    l2 = 0.5 * 0.2 * sum(float(np.sum(np.asarray(p["W"]) ** 2)) for p in params if "W" in p)
    assert float(value) == pytest.approx(ce + l2, rel=1e-12)
    eval_logits, _ = _np_forward(params, state, x, spec, train=False)
    np.testing.assert_array_equal(predicted, eval_logits.argmax(1))     # predict uses eval mode


@pytest.mark.parametrize("bn", ["before", "after"])
def test_batchnorm_trains_at_its_smallest_legal_batch(bn):
    """Batch 2, BatchNorm in train mode: a few SGD steps with the hand gradients stay
    finite, agree with autodiff's, lower the loss, and update the running statistics."""
    spec = model.make_spec((8,), batchnorm=bn)
    params, state = model.init(jax.random.key(4), spec, 5)
    x, y = _batch(2, 5, seed=5)
    step = jax.jit(lambda p, s: model.loss_and_grads_manual(p, s, x, y, spec, 1e-3))
    auto = jax.jit(lambda p, s: model.loss_and_grads_autodiff(p, s, x, y, spec, 1e-3))
    opt = optim.sgd(0.1)
    opt_state, losses = opt.init(params), []
    for _ in range(5):
        value, grads, new_state, _ = step(params, state)
        _, grads_auto, _, _ = auto(params, state)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_auto)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((value, grads, new_state)))
        losses.append(float(value))
        params, opt_state = opt.update(grads, opt_state, params)
        state = new_state
    assert losses[-1] < losses[0]
    bn_index = [n for n, _ in spec].index("batchnorm")
    assert float(jnp.max(jnp.abs(state[bn_index]["mean"]))) > 0     # the running mean moved off 0


def test_make_spec_limits():
    assert model.make_spec((), num_classes=2) == (("dense", 2),)        # the smallest legal model
    assert model.make_spec((1,), num_classes=2) == (("dense", 1), ("relu", 1), ("dense", 2))
    with pytest.raises(SvhnJaxError, match="num_classes must be at least 2, got 1"):
        model.make_spec((4,), num_classes=1)
    with pytest.raises(SvhnJaxError, match="positive integers"):
        model.make_spec((4, -1))
    with pytest.raises(SvhnJaxError, match="positive integers"):
        model.make_spec((2.5,))


def test_documented_defaults_no_l2_and_train_mode():
    """loss, loss_and_grads_manual and loss_and_grads_autodiff default to reg=0 and train=True."""
    spec = model.make_spec((6,), batchnorm="before")
    with jax.enable_x64(True):
        params, state = model.init(jax.random.key(5), spec, 4, jnp.float64)
        x, y = _batch(5, 4, 6, jnp.float64)
        logits, train_state, _ = model.forward(params, state, x, spec, train=True)
        m = np.max(np.asarray(logits), 1, keepdims=True)
        ce = float(np.mean(m[:, 0] + np.log(np.exp(np.asarray(logits) - m).sum(1))
                           - np.asarray(logits)[np.arange(5), np.asarray(y)]))
        assert float(model.loss(params, state, x, y, spec)[0]) == pytest.approx(ce, rel=1e-13)
        for fn in model.GRAD_MODES.values():
            value, grads, new_state, _ = fn(params, state, x, y, spec)
            value0, grads0, state0, _ = fn(params, state, x, y, spec, 0.0, train=True)
            assert float(value) == pytest.approx(ce, rel=1e-13) and float(value) == float(value0)
            for a, b in zip(jax.tree.leaves((grads, new_state)), jax.tree.leaves((grads0, state0))):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(train_state)):
                np.testing.assert_array_equal(a, b)     # train mode: the running statistics moved

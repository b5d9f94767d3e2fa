"""Whole-model gradient checks, the per-step check, and proof that the checks can fail.

Tolerances: hand vs jax.grad <= 1e-10, hand vs finite differences <= 1e-6
(float64 relative errors, see svhn_jax.nn.gradcheck.rel_error and its floor).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.nn import gradcheck, layers, losses, model, stepcheck
from svhn_jax.nn.gradcheck import GradCheckError

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
    # every entry compared with its finite difference, none set aside
    assert [(leaf["fd_entries"], leaf["fd_set_aside"]) for leaf in r["leaves"]] == [
        (leaf["size"], 0) for leaf in r["leaves"]]
    assert [leaf["name"] for leaf in r["leaves"]] == gradcheck.leaf_names(spec, model.init(
        jax.random.key(0), spec, 12)[0])


def test_model_check_at_full_input_width_with_sampled_entries():
    spec = model.make_spec((32,), batchnorm="before")
    r = gradcheck.check_model(spec, in_dim=3072, batch=4, reg=0.05, fd_samples=10, seed=2)
    assert r["max_rel_error_manual_vs_autodiff"] <= TOL_AUTODIFF
    assert r["max_rel_error_manual_vs_finite_diff"] <= TOL_FD
    assert [leaf["fd_entries"] for leaf in r["leaves"]] == [10, 10, 10, 10, 10]


def test_random_inputs_keep_away_from_relu_kinks():
    v = gradcheck._away_from_zero(np.random.default_rng(0), (1000,))
    assert np.all((np.abs(v) >= 0.1) & (np.abs(v) <= 1.1)) and 400 < np.sum(v < 0) < 600


def test_check_layer_defaults_to_train_mode():
    assert gradcheck.check_layer("batchnorm", batch=3, in_dim=2)["check"] == "batchnorm (train mode)"
    assert gradcheck.check_layer("batchnorm", batch=3, in_dim=2, train=False)["check"] == "batchnorm (eval mode)"


def test_the_check_is_the_same_for_the_same_seed_and_differs_across_seeds():
    spec = model.make_spec((6,), batchnorm="after")
    a, b, c = (gradcheck.check_model(spec, in_dim=5, batch=3, seed=s) for s in (7, 7, 8))
    assert a == b and a["leaves"] != c["leaves"]


def sign_flipped_dense_backward(params, cache, dy):
    grads, dx = layers.dense_backward(params, cache, dy)
    return {**grads, "W": -grads["W"]}, dx


def bn_backward_missing_mean_term(params, cache, dy):
    """A classic mistake: forgetting that the batch mean depends on x."""
    grads = {"gamma": (dy * cache["xhat"]).sum(0), "beta": dy.sum(0)}
    dxhat = dy * params["gamma"]
    xhat = cache["xhat"]
    return grads, cache["inv_std"] * (dxhat - xhat * (dxhat * xhat).mean(0))


def relu_backward_wrong_side(params, mask, dy):
    """A plausible bug: passing the gradient where x < 0 instead of x > 0."""
    return layers.relu_backward(params, ~mask, dy)


def nan_dense_backward(params, cache, dy):
    return jax.tree.map(lambda a: a * jnp.nan, layers.dense_backward(params, cache, dy))


def test_sign_flip_is_caught():
    r = gradcheck.check_layer("dense", backward=sign_flipped_dense_backward)
    assert not r["ok"]
    assert r["max_rel_error_manual_vs_autodiff"] > 0.5
    with pytest.raises(gradcheck.GradCheckError, match=r"dense\.W: hand-written gradient differs from jax\.grad"):
        gradcheck.assert_ok(r)
    # the references agree with each other, so the culprit is the hand code
    assert r["max_rel_error_autodiff_vs_finite_diff"] <= TOL_FD


def _patch(monkeypatch, name, backward):
    monkeypatch.setitem(layers.LAYERS, name, layers.LAYERS[name]._replace(backward=backward))


def test_missing_batchnorm_term_is_caught_per_layer_and_in_the_model(monkeypatch):
    r = gradcheck.check_layer("batchnorm", backward=bn_backward_missing_mean_term)
    assert not r["ok"]
    assert any(f.startswith("x: hand-written gradient differs from finite differences") for f in r["failures"])

    _patch(monkeypatch, "batchnorm", bn_backward_missing_mean_term)
    spec = model.make_spec((8, 6), batchnorm="before")
    r = gradcheck.check_model(spec, in_dim=5, batch=6)
    assert not r["ok"]
    # the last BN's own gamma/beta and everything above it are still right; every
    # leaf below it gets the wrong input gradient, from both references
    names = {leaf["name"] for leaf in r["leaves"]}
    wrong = {"0.dense.W", "1.batchnorm.gamma", "1.batchnorm.beta", "3.dense.W"}
    right = {"4.batchnorm.gamma", "4.batchnorm.beta", "6.dense.W", "6.dense.b"}
    assert names == wrong | right
    for reference in ("jax.grad", "finite differences"):
        failed = {f.split(":")[0] for f in r["failures"] if f"differs from {reference}" in f}
        assert failed == wrong, reference


def bn_backward_without_gamma(params, cache, dy):
    """dxhat = dy, forgetting the scale: exact wherever gamma = 1, as at initialisation."""
    grads, _ = layers.batchnorm_backward(params, cache, dy)
    ones = {"gamma": jnp.ones_like(params["gamma"]), "beta": params["beta"]}
    return grads, layers.batchnorm_backward(ones, cache, dy)[1]


def test_checks_draw_gamma_far_from_one_and_catch_a_bug_invisible_at_one(monkeypatch):
    with gradcheck.float64():
        params, state = gradcheck._random_params(np.random.default_rng(0), model.make_spec((64,), batchnorm="after"), 5)
    gamma, var = np.asarray(params[2]["gamma"]), np.asarray(state[2]["var"])
    assert np.median(np.abs(gamma - 1)) > 0.2 and np.median(np.abs(var - 1)) > 0.1
    assert np.median(np.abs(np.asarray(params[2]["beta"]))) > 0.1
    for train in (True, False):
        r = gradcheck.check_layer("batchnorm", train=train, backward=bn_backward_without_gamma)
        assert not r["ok"] and any(f.startswith("x: hand-written gradient differs") for f in r["failures"])
    _patch(monkeypatch, "batchnorm", bn_backward_without_gamma)
    assert not gradcheck.check_model(model.make_spec((6,), batchnorm="before"), in_dim=5, batch=4)["ok"]
    # the per-step check too, once gamma has left 1 (training moves it; here, drawn)
    spec = model.make_spec((6,), batchnorm="before")
    with gradcheck.float64():
        drawn = gradcheck._random_params(np.random.default_rng(1), spec, 5)
    params, state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), drawn)
    x, y = jax.random.normal(jax.random.key(1), (8, 5)), jnp.arange(8) % 10
    jax.clear_caches()
    try:
        grads = model.loss_and_grads_manual(params, state, x, y, spec, 0.1)[1]
        c = stepcheck.check(params, state, x, y, 0.1, jax.random.key(2), spec, "manual", grads=grads)
    finally:
        jax.clear_caches()
    assert float(c.manual_vs_autodiff) > 1e-2


def test_step_check_passes_on_the_real_backward_and_fails_on_a_broken_one(monkeypatch):
    spec = model.make_spec((16,), batchnorm="before")
    params, state = model.init(jax.random.key(0), spec, 20)
    x = jax.random.normal(jax.random.key(1), (8, 20))
    y = jnp.arange(8) % 10
    good = stepcheck.step_check(params, state, x, y, spec, 1e-3, jax.random.key(2))
    # float64: hand vs jax.grad and vs jax.jvp are exact, to 2^10 float64 roundoffs
    assert good["manual_vs_autodiff"] <= 2.0 ** -43 and good["directional_jvp"] <= 2.0 ** -43
    assert good["directional_fd"] <= TOL_FD and good["smooth"] and good["passed"]
    # a step far too large for the loss's curvature (and its ReLU kinks) is flagged
    coarse = stepcheck.step_check(params, state, x, y, spec, 1e-3, jax.random.key(2), eps=0.3)
    assert not coarse["smooth"]

    _patch(monkeypatch, "batchnorm", bn_backward_missing_mean_term)
    jax.clear_caches()  # the jitted check was traced with the correct backward
    bad = stepcheck.step_check(params, state, x, y, spec, 1e-3, jax.random.key(2))
    assert bad["manual_vs_autodiff"] > 1e-3
    assert bad["directional_fd"] > 1e-4 and bad["smooth"]   # a real failure, at a smooth point
    assert not bad["passed"]
    jax.clear_caches()


def test_a_nan_gradient_fails_the_checks(monkeypatch):
    r = gradcheck.check_layer("dense", backward=nan_dense_backward)
    assert not r["ok"] and any("dense.W" in f for f in r["failures"])
    _patch(monkeypatch, "dense", nan_dense_backward)
    jax.clear_caches()
    spec = model.make_spec((8,))
    params, state = model.init(jax.random.key(0), spec, 6)
    x, y = jax.random.normal(jax.random.key(1), (4, 6)), jnp.arange(4)
    r = stepcheck.step_check(params, state, x, y, spec, 0.0, jax.random.key(2))
    assert not r["manual_vs_autodiff"] <= 1e-10     # NaN: never "within tolerance"
    jax.clear_caches()


# ------------------------------------------- tree structure (issue 9, item 8)


def _drop_last_bias(params, *args, **kwargs):
    loss, grads, state, logits = model.loss_and_grads_manual(params, *args, **kwargs)
    return loss, grads[:-1] + ({"W": grads[-1]["W"]},), state, logits


def _transpose_first_weight(params, *args, **kwargs):
    loss, grads, state, logits = model.loss_and_grads_manual(params, *args, **kwargs)
    return loss, ({**grads[0], "W": grads[0]["W"].T},) + grads[1:], state, logits


def _extra_leaf(params, *args, **kwargs):
    loss, grads, state, logits = model.loss_and_grads_manual(params, *args, **kwargs)
    return loss, grads[:1] + ({"scale": jnp.ones(())},) + grads[2:], state, logits


SPEC = model.make_spec((6,), batchnorm="after")   # dense, relu, batchnorm, dense


@pytest.mark.parametrize("manual,match", [
    (_drop_last_bias, r"the hand-written gradient lacks 3\.dense\.b \(present in the jax\.grad gradient\)$"),
    (_transpose_first_weight, r"^0\.dense\.W has shape \(6, 5\) in the hand-written gradient but "
                              r"\(5, 6\) in the jax\.grad gradient$"),
    (_extra_leaf, r"^the hand-written gradient has 1\.relu\.scale \(absent from the jax\.grad gradient\)$"),
])
def test_a_wrong_gradient_tree_is_named(manual, match):
    """Before: a dropped leaf passed, silently missing from the report, and a
    misshapen one crashed in NumPy broadcasting."""
    with pytest.raises(GradCheckError, match=match):
        gradcheck.check_model(SPEC, in_dim=5, batch=4, manual=manual)


def test_a_layer_backward_with_a_wrong_tree_is_named():
    drop_bias = lambda p, cache, dy: ({"W": layers.dense_backward(p, cache, dy)[0]["W"]},
                                      layers.dense_backward(p, cache, dy)[1])
    with pytest.raises(GradCheckError, match=r"lacks dense\.b"):
        gradcheck.check_layer("dense", backward=drop_bias)
    wrong_dx = lambda p, cache, dy: (layers.dense_backward(p, cache, dy)[0], dy)
    with pytest.raises(GradCheckError, match=r"^x has shape \(8, 5\) in the hand-written gradient "
                                             r"but \(8, 6\) in the jax\.grad gradient$"):
        gradcheck.check_layer("dense", backward=wrong_dx)


def test_a_function_patched_after_a_check_is_seen_by_the_next_one(monkeypatch):
    """The checks reuse compilations per layout; a replaced function must not hit a stale one."""
    spec = model.make_spec((4,))
    assert gradcheck.check_model(spec, in_dim=3, batch=3)["ok"]
    original = losses.softmax_cross_entropy_backward
    double = lambda cache: 2 * original(cache)
    monkeypatch.setattr(losses, "softmax_cross_entropy_backward", double)
    r = gradcheck.check_model(spec, in_dim=3, batch=3)
    assert not r["ok"] and any(f.startswith("2.dense.b: hand-written gradient differs") for f in r["failures"])

"""The per-step gradient check inside the compiled epoch (svhn_jax.nn.stepcheck).

Training with checks on every step must end bit for bit where training without
them ends; correct code must never fail a check; each injected bug must fail
the check on every step; the host side must turn the scan's arrays into rows,
verdicts and a strict-JSON summary that agree with each other.

The network is real-shaped but small: 32x32 grayscale inputs (1024 features,
so the random-shift augmentation runs), one or two narrow hidden layers.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.step import mesh as meshes, parallel, train
from svhn_jax.nn import layers, model, schedules, stepcheck
from svhn_jax.nn.gradcheck import GradCheckError

N, BATCH, IN_DIM = 512, 32, 1024
STEPS = N // BATCH
TOL = stepcheck.tolerance()


@pytest.fixture(scope="module")
def data():
    """Learnable SVHN-shaped data: a template per class plus noise, each image
    standardised (what the package's 'image' preprocessing does)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, N).astype(np.int32)
    X = rng.normal(size=(10, IN_DIM))[y] + 2.0 * rng.normal(size=(N, IN_DIM))
    X = (X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)
    return jnp.asarray(X, jnp.float32), jnp.asarray(y)


def config(hidden=(16,), batchnorm="none", grad_mode="manual", every=1):
    return train.check_config(train.StepConfig(
        model.make_spec(hidden, batchnorm=batchnorm), "adam", schedules.ScheduleSpec("cosine", total_steps=200),
        BATCH, grad_mode, shift=2, image_shape=(32, 32, 1), check_every=every))


HP = train.Hyper(lr=jnp.float32(3e-3), reg=jnp.float32(3e-3))


def train_epochs(cfg, data, epochs, hp=HP):
    """(final state, per-epoch outputs of run_steps) over whole epochs."""
    X, y = data
    state = train.init_state(0, cfg, IN_DIM, hp)
    outs = []
    for e in range(epochs):
        state, out = train.run_steps(state, hp, X, y, train.epoch_order(state.key, e, N, BATCH), 0, cfg, STEPS)
        outs.append(jax.tree.map(np.asarray, out))
    return state, outs


def rows_of(outs):
    return [r for e, out in enumerate(outs) for r in stepcheck.records(out[2], e + 1)]


def test_checks_pass_on_correct_code_and_leave_training_bit_identical(data):
    epochs = 6   # 192 steps, each checked
    plain, plain_outs = train_epochs(config(every=0), data, epochs)
    checked, outs = train_epochs(config(), data, epochs)
    assert_same_training(plain, checked)
    assert all(np.array_equal(p[0], c[0]) for p, c in zip(plain_outs, outs))
    rows = rows_of(outs)
    assert [r["step"] for r in rows] == list(range(epochs * STEPS))
    assert_correct(rows)


def assert_same_training(a, b):
    for u, v in zip(jax.tree.leaves((a.params, a.bn_state, a.opt_state)),
                    jax.tree.leaves((b.params, b.bn_state, b.opt_state))):
        assert np.array_equal(np.asarray(u), np.asarray(v))


def assert_correct(rows):
    assert stepcheck.first_failure(rows) is None and all(r["passed"] for r in rows)
    s = stepcheck.summary(rows)
    assert s["gradchecks_failed"] == 0 and s["gradchecks_nonsmooth"] <= 0.05 * len(rows)
    # the errors of correct code are float32 rounding, far below the tolerance
    assert max(s["gradcheck_max_manual_vs_autodiff"], s["gradcheck_max_directional_jvp"],
               s["gradcheck_max_directional_fd"]) < TOL / 8


# ------------------------------------------------------------ injected bugs


def _sign_flip(backward):
    """The input gradient of every Dense layer with the wrong sign."""
    def broken(params, cache, dy):
        g, dx = backward(params, cache, dy)
        return g, -dx
    return broken


def _last_bias_off_by_one_percent(backward):
    def broken(params, cache, dy):
        g, dx = backward(params, cache, dy)
        if g["b"].shape == (10,):
            g = dict(g, b=1.01 * g["b"])
        return g, dx
    return broken


def _one_first_layer_entry_zeroed(backward):
    def broken(params, cache, dy):
        g, dx = backward(params, cache, dy)
        if g["W"].shape[0] == IN_DIM:
            g = dict(g, W=g["W"].at[3, 5].set(0.0))
        return g, dx
    return broken


def _batchnorm_without_mean_term(_):
    """BatchNorm's input gradient forgetting the mean term (a classic derivation slip)."""
    def broken(params, cache, dy):
        grads = {"gamma": (dy * cache["xhat"]).sum(0), "beta": dy.sum(0)}
        dxhat = dy * params["gamma"]
        return grads, cache["inv_std"] * (dxhat - cache["xhat"] * (dxhat * cache["xhat"]).mean(0))
    return broken


BUGS = {"sign flip": ("dense", _sign_flip, "none"),
        "1% error in the last bias": ("dense", _last_bias_off_by_one_percent, "none"),
        "one zeroed first-layer weight entry": ("dense", _one_first_layer_entry_zeroed, "none"),
        "missing BatchNorm mean term": ("batchnorm", _batchnorm_without_mean_term, "before")}


@pytest.mark.parametrize("bug", list(BUGS))
def test_every_injected_bug_fails_the_check_on_every_step(data, monkeypatch, bug):
    layer, breaker, batchnorm = BUGS[bug]
    monkeypatch.setitem(layers.LAYERS, layer, layers.LAYERS[layer]._replace(
        backward=breaker(layers.LAYERS[layer].backward)))
    train.run_steps.clear_cache()   # the compiled epoch was traced with the correct backward
    try:
        _, outs = train_epochs(config((16,), batchnorm), data, 3)
    finally:
        train.run_steps.clear_cache()
    rows = rows_of(outs)
    assert len(rows) == 3 * STEPS
    failed = [not r["passed"] for r in rows]
    worst = min(rows, key=lambda r: r["manual_vs_autodiff"])
    print(f"\n{bug}: {sum(failed)}/{len(rows)} steps failed; smallest hand vs jax.grad error "
          f"{worst['manual_vs_autodiff']:.1e} (tolerance {TOL:.1e}), directional jvp median "
          f"{np.median([r['directional_jvp'] for r in rows]):.1e}")
    assert all(failed)
    # the per-entry comparison fails on its own, every step: it is against jax.grad, not itself
    assert all(r["manual_vs_autodiff"] > TOL for r in rows)
    assert stepcheck.first_failure(rows) is rows[0]
    assert stepcheck.summary(rows)["gradcheck_first_failed_step"] == 0


# ------------------------------------------------------------------ sweeps


def test_sweeps_check_every_configuration_in_autodiff_mode_with_batchnorm(data):
    X, y = data
    cfg, k, epochs = config((16,), "before", "autodiff", every=3), 2, 2
    hps = train.Hyper(lr=jnp.asarray([1e-3, 3e-3], jnp.float32), reg=jnp.asarray([0.0, 1e-2], jnp.float32),
                      smoothing=jnp.asarray([0.0, 0.1], jnp.float32))
    one = lambda i: jax.tree.map(lambda a: a[i], hps)
    init = lambda cfg: jax.tree.map(lambda *a: jnp.stack(a), *[
        train.init_state(seed, cfg, IN_DIM, one(i)) for i, seed in enumerate((0, 1))])
    order = lambda states, e: jnp.stack([train.epoch_order(states.key[i], e, N, BATCH) for i in range(k)])
    states, plain = init(cfg), init(cfg._replace(check_every=0))
    place = meshes.Placement(None, k, k, True)
    many = lambda s, o, cfg, count: parallel.run_segment(s, hps, X, y, o, 0, cfg, count, place)
    jaxpr = str(jax.make_jaxpr(lambda s: many(s, order(s, 0), cfg, 1))(states))
    assert "cond[" in jaxpr   # a real branch: the steps between checks do not run it
    rows = [[], []]
    for e in range(epochs):
        states, (ce, _, checks) = many(states, order(states, e), cfg, STEPS)
        plain, _ = many(plain, order(plain, e), cfg._replace(check_every=0), STEPS)
        assert ce.shape == (k, STEPS) and checks.manual_vs_autodiff.shape == (k, STEPS)
        for i in range(k):
            rows[i] += stepcheck.records(checks, epoch=e + 1, config=i)
    assert_same_training(states, plain)
    for i in range(k):
        assert [r["step"] for r in rows[i]] == [e * STEPS + j for e in range(epochs) for j in range(0, STEPS, 3)]
        assert_correct(rows[i])
    # each configuration is checked on its own parameters and direction (seeds 0 and 1)
    assert [r["directional_jvp"] for r in rows[0]] != [r["directional_jvp"] for r in rows[1]]


# ------------------------------------------------------------- the pieces


def _small_problem(hidden=(8,), batchnorm="none"):
    spec = model.make_spec(hidden, batchnorm=batchnorm)
    params, state = model.init(jax.random.key(0), spec, 12)
    x = jax.random.normal(jax.random.key(1), (6, 12))
    return spec, params, state, x, jnp.arange(6) % 10


def test_tree_products_name_a_missing_or_misshapen_leaf():
    spec, params, _, _, _ = _small_problem()
    no_last_bias = (params[0], params[1], {"W": params[2]["W"]})
    with pytest.raises(GradCheckError, match=r"the gradient lacks 2\.dense\.b \(present in the direction\)"):
        jax.eval_shape(lambda: stepcheck.tree_vdot(no_last_bias, params, spec))
    transposed = (dict(params[0], W=params[0]["W"].T), params[1], params[2])
    with pytest.raises(GradCheckError, match=r"0\.dense\.W has shape \(8, 12\)"):
        stepcheck.paired_leaves(transposed, params, spec)
    expected = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in jax.tree.leaves(params))
    assert float(jax.jit(lambda: stepcheck.tree_vdot(params, params, spec))()) == pytest.approx(expected, rel=1e-6)


def test_the_check_names_a_missing_or_misshapen_gradient_leaf():
    spec, params, state, x, y = _small_problem()
    check = lambda grads: jax.eval_shape(lambda: stepcheck.check(
        params, state, x, y, 0.0, jax.random.key(0), spec, "manual", grads=grads))
    with pytest.raises(GradCheckError, match=r"the hand gradient lacks 2\.dense\.b"):
        check((params[0], params[1], {"W": params[2]["W"]}))
    with pytest.raises(GradCheckError, match=r"2\.dense\.b has shape \(1, 10\) in the hand gradient"):
        check((params[0], params[1], dict(params[2], b=params[2]["b"][None])))
    assert check(params).manual_vs_autodiff.shape == ()


def test_direction_is_a_unit_sign_vector_shaped_like_the_parameters():
    _, params, _, _, _ = _small_problem(batchnorm="before")
    v = jax.jit(stepcheck.direction)(jax.random.key(3), params)
    assert jax.tree.structure(v) == jax.tree.structure(params)
    flat = np.concatenate([np.asarray(a).ravel() for a in jax.tree.leaves(v)])
    assert np.allclose(np.abs(flat), 1 / math.sqrt(flat.size)) and abs(np.sum(flat ** 2) - 1) < 1e-6
    assert 0.4 < np.mean(flat > 0) < 0.6


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_a_kink_in_any_hidden_layer_sets_the_difference_aside(layer):
    """Unit 0 of hidden layer `layer` (of three) sits half a step from ReLU's kink
    for the first image: the two ends of the difference straddle it, whichever
    layer it is in (far enough from it that rounding cannot decide its side)."""
    spec, params, state, x, y = _small_problem((8, 6, 5))
    eps, dense, v = 1e-3, 2 * layer, stepcheck.direction(jax.random.key(0), params)
    pre = lambda p: model.forward(p[:dense + 1], state[:dense + 1], x, spec[:dense + 1], train=True)[0][0, 0]
    at, along = jax.jvp(pre, (params,), (v,))     # the unit's input and its derivative along v
    b = params[dense]["b"]
    params = params[:dense] + (dict(params[dense], b=b.at[0].add(0.5 * eps * abs(along) - at)),) + params[dense + 1:]
    grads = model.loss_and_grads_manual(params, state, x, y, spec)[1]
    c = jax.jit(lambda: stepcheck.check(params, state, x, y, 0.0, jax.random.key(0), spec, "manual",
                                        grads=grads, eps=eps))()
    _, no_kink = jax.jit(lambda: stepcheck._ends(params, state, x, y, v, spec, 0.0, eps))()
    assert not bool(no_kink) and not bool(c.smooth)
    row = {"step": 0, "epoch": 1, "manual_vs_autodiff": float(c.manual_vs_autodiff),
           "directional_jvp": float(c.directional_jvp), "directional_fd": 1.0, "smooth": False}
    assert stepcheck.passed(row)                                  # a set-aside difference does not count
    assert not stepcheck.passed(dict(row, smooth=True))


def test_a_network_without_relu_has_no_kink_to_straddle():
    """Softmax regression (no hidden layer): the difference always counts."""
    spec, params, state, x, y = _small_problem(())
    c = jax.jit(lambda: stepcheck.check(params, state, x, y, 0.0, jax.random.key(0), spec, "manual"))()
    assert bool(c.smooth) and float(c.directional_fd) < TOL / 8


def test_the_difference_is_the_float64_loss_difference():
    """The ends of the central difference equal model.loss in float64 up to the
    float32 rounding of the first layer's products."""
    spec, params, state, x, y = _small_problem((8, 6), "after")
    v = stepcheck.direction(jax.random.key(1), params)
    ends, no_kink = jax.jit(lambda: stepcheck._ends(params, state, x, y, v, spec, 0.1, 1e-3))()
    with jax.enable_x64(True):
        up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        at = lambda s: model.loss(jax.tree.map(lambda p, d: p + s * 1e-3 * d, up(params), up(v)),
                                  up(state), up(x), y, spec, 0.1)[0]
        expected = np.asarray(jax.jit(lambda: jnp.stack([at(1.0), at(-1.0)]))())
    assert bool(no_kink) and ends.dtype == np.float64
    np.testing.assert_allclose(np.asarray(ends), expected, rtol=1e-6)
    assert expected.dtype == np.float64


def test_an_error_along_the_direction_fails_the_directional_comparisons_alone():
    """An error of 3 tolerances of the typical directional derivative |g| / sqrt(P),
    all along v: every entry stays well within the per-entry tolerance, yet both
    directional comparisons fail. (A floor of |g| instead of
    |g| / sqrt(P) would make them sqrt(P) ~ 50 times less sensitive and pass it.)"""
    spec, params, state, x, y = _small_problem((200,))
    grads = model.loss_and_grads_manual(params, state, x, y, spec, 0.0)[1]
    key = jax.random.key(0)
    v = stepcheck.direction(key, params)
    n = sum(a.size for a in jax.tree.leaves(params))
    floor = float(jnp.sqrt(stepcheck.tree_vdot(grads, grads))) / math.sqrt(n)
    gv = float(stepcheck.tree_vdot(grads, v))
    assert abs(gv) < floor and math.sqrt(n) > 50          # a typical direction for this key
    delta = 3 * TOL * (2 * abs(gv) + floor)
    wrong = jax.tree.map(lambda g, d: g + delta * d, grads, v)
    c = jax.jit(lambda: stepcheck.check(params, state, x, y, 0.0, key, spec, "manual", grads=wrong))()
    assert float(c.manual_vs_autodiff) < TOL / 8 and bool(c.smooth)   # every entry passes
    assert float(c.directional_jvp) > 2 * TOL and float(c.directional_fd) > 2 * TOL
    right = jax.jit(lambda: stepcheck.check(params, state, x, y, 0.0, key, spec, "manual", grads=grads))()
    assert max(float(right.directional_jvp), float(right.directional_fd)) < TOL / 8


def test_the_measures_known_values():
    assert float(stepcheck.directional_error(1.0, 1.5, 0.5)) == pytest.approx(0.5 / 3.0)
    assert float(stepcheck.directional_error(-1.0, 1.0, 0.0)) == 1.0
    assert float(stepcheck.directional_error(0.0, 2e-9, 1e-8)) == pytest.approx(2e-9 / 1.2e-8)
    a = (jnp.array([1.0, 2.0]), jnp.array([[1e-3]]))
    b = (jnp.array([1.0, 2.5]), jnp.array([[2e-3]]))
    assert float(stepcheck.leaf_rel_error(a[0], b[0])) == pytest.approx(0.5 / 4.5)
    assert float(stepcheck.leaf_rel_error(a[1], b[1])) == pytest.approx(1 / 3)
    assert float(stepcheck.leaf_rel_error(jnp.zeros(3), jnp.array([0.0, 2e-9, 0.0]))) == pytest.approx(0.2)
    assert float(stepcheck.leaf_rel_error(jnp.zeros((0, 2)), jnp.zeros((0, 2)))) == 0.0
    assert float(stepcheck.worst_leaf_error(a, b)) == pytest.approx(1 / 3)       # the worst leaf
    assert float(stepcheck.tree_rel_error(a, b)) == pytest.approx(0.5 / 4.5)     # the whole gradient's scale
    assert float(stepcheck.tree_rel_error(a, (b[0], a[1]))) == pytest.approx(0.5 / 4.5)
    tiny = (jnp.zeros(2), jnp.array([[0.0]]))
    assert float(stepcheck.tree_rel_error(tiny, (jnp.array([0.0, 2e-9]), tiny[1]))) == pytest.approx(0.2)  # floor 1e-8


def test_a_difference_counts_when_its_rounding_is_within_a_tenth_of_the_tolerance():
    """rounding = 16 ulps * (|L+| + |L-|) / 2 eps must be <= 0.1 tol (|gv| + |fd| + floor)."""
    ends, eps, tol = jnp.array([1.0, -1.0], jnp.float32), 1e-5, 6e-5
    with jax.enable_x64(True):
        rounding = 16 * 2.0 ** -52 * 2.0 / (2 * eps)                       # 3.55e-10
        scale = rounding / (0.1 * tol)                                       # 5.92e-5: the boundary
        counts = lambda gv, fd, floor, t=tol, e=ends: bool(stepcheck.difference_counts(
            jnp.asarray(e, jnp.float64), eps, gv, fd, floor, t))
        # just above the boundary: dropping any term, or subtracting it, falls below
        assert counts(0.5 * scale, -0.3 * scale, 0.22 * scale)
        assert counts(-0.5 * scale, 0.3 * scale, 0.22 * scale)              # magnitudes
        assert not counts(0.5 * scale, -0.3 * scale, 0.18 * scale)         # just below
        assert counts(0.5 * scale, 0.0, 0.0, 2.01 * tol)                    # the tolerance is used
        assert not counts(0.5 * scale, 0.0, 0.0, 1.99 * tol)
        assert counts(1.01 * scale, 0.0, 0.0, tol, [3.0, -1.0]) is False   # the losses' size is used
        assert counts(2.01 * scale, 0.0, 0.0, tol, [3.0, -1.0])


# -------------------------------------------------------------- host side


def _checks(**fields):
    base = dict(checked=[True, False, True, True], step=[10, 11, 12, 13],
                manual_vs_autodiff=[1e-7, 0.0, 2e-7, 5e-1], directional_jvp=[3e-7, 0.0, 1e-6, 0.2],
                directional_fd=[2e-7, 0.0, 0.4, 0.3], smooth=[True, False, False, True],
                training_precision_error=[1e-3, 0.0, 5e-2, 2e-3], training_precision_bound=[1e-2] * 4)
    base.update(fields)
    return stepcheck.StepCheck(*(np.asarray(base[f]) for f in stepcheck.StepCheck._fields))


def test_records_passed_first_failure_message_and_summary_agree():
    rows = stepcheck.records(_checks(), epoch=2)
    assert [r["step"] for r in rows] == [10, 12, 13]
    # step, epoch, what was checked, the three comparisons in their usual order,
    # the information, then the verdicts (issue 18, item 11)
    assert list(rows[0]) == ["step", "epoch", "mode", "manual_vs_autodiff", "directional_jvp", "directional_fd",
                             "training_precision_error", "training_precision_bound", "smooth", "passed"]
    assert tuple(rows[0]) == stepcheck.COLUMNS
    assert rows[1] == {"step": 12, "epoch": 2, "mode": "train", "manual_vs_autodiff": 2e-7,
                       "directional_jvp": 1e-6, "directional_fd": 0.4, "training_precision_error": 5e-2,
                       "training_precision_bound": 1e-2, "smooth": False, "passed": True}  # 0.4: set aside
    assert [r["passed"] for r in rows] == [True, True, False]
    assert stepcheck.first_failure(rows) is rows[2]
    msg = stepcheck.message(rows[2])
    assert "check at step 13 (epoch 2)" in msg and "5.0e-01" in msg and f"{TOL:.1e}" in msg
    s = stepcheck.summary(rows)
    assert s == {"gradchecks": 3, "gradchecks_failed": 1, "gradchecks_eval": 0, "gradchecks_nonsmooth": 1,
                 "gradcheck_first_failed_step": 13, "gradcheck_max_manual_vs_autodiff": 0.5,
                 "gradcheck_max_directional_jvp": 0.2, "gradcheck_max_directional_fd": 0.3,
                 "gradcheck_tolerance": TOL, "gradcheck_max_training_precision_error": 5e-2,
                 "gradcheck_training_precision_bound": 1e-2, "gradchecks_over_training_precision_bound": 1}
    # a K-configuration result: pick one
    two = stepcheck.StepCheck(*(np.stack([a, a]) for a in _checks()))
    assert stepcheck.records(two, epoch=2, config=1) == rows
    # one eval-mode check of scalars (train.check_eval)
    one = stepcheck.StepCheck(*(a[3] for a in _checks()))
    (row,) = stepcheck.records(one, epoch=4, mode="eval")
    assert row == dict(rows[2], epoch=4, mode="eval")
    assert stepcheck.message(row).startswith("gradient check (eval mode) at step 13 (epoch 4) failed")
    assert stepcheck.summary(rows + [row])["gradchecks_eval"] == 1


def test_each_comparison_fails_alone_and_the_finite_difference_only_where_smooth():
    """One error over the tolerance fails a check, whichever comparison it is in;
    per-comparison tolerances (`tolerances`) judge each with its own."""
    ok = {"manual_vs_autodiff": TOL, "directional_jvp": TOL, "directional_fd": TOL, "smooth": True}
    assert stepcheck.passed(ok)
    for key in stepcheck.COMPARISONS:
        assert not stepcheck.passed(dict(ok, **{key: 1.01 * TOL})), key
        assert not stepcheck.passed(dict(ok, **{key: math.nan})), key
        assert stepcheck.passed(dict(ok, **{key: 1.01 * TOL}), 1.02 * TOL)
        tols = dict.fromkeys(stepcheck.COMPARISONS, TOL)
        assert not stepcheck.passed(dict(ok, **{key: 1.01 * TOL}), tols)
        assert stepcheck.passed(dict(ok, **{key: 1.01 * TOL}), dict(tols, **{key: 1.02 * TOL}))
    assert stepcheck.passed(dict(ok, directional_fd=1.0, smooth=False))
    assert not stepcheck.passed(dict(ok, directional_jvp=1.0, smooth=False))


def test_rows_without_the_newer_columns_are_judged_and_summarised():
    """Rows written before `smooth`, `directional_jvp`, `mode` and the training
    precision existed (a checkpoint of an older run, a script's rows): the
    difference counts, nothing is an eval check or over a bound."""
    old = [{"step": 3, "epoch": 1, "manual_vs_autodiff": 1e-7, "directional_fd": 2e-7},
           {"step": 4, "epoch": 1, "manual_vs_autodiff": 1e-7, "directional_fd": 1.0}]
    assert stepcheck.passed(old[0]) and not stepcheck.passed(old[1])
    assert "set aside" not in stepcheck.message(old[1]) and "(eval mode)" not in stepcheck.message(old[1])
    s = stepcheck.summary(old)
    assert (s["gradchecks"], s["gradchecks_failed"], s["gradchecks_eval"], s["gradchecks_nonsmooth"]) == (2, 1, 0, 0)
    assert s["gradcheck_max_directional_fd"] == 1.0 and s["gradcheck_max_directional_jvp"] is None
    assert s["gradcheck_max_training_precision_error"] is None and s["gradchecks_over_training_precision_bound"] == 0


def test_summary_is_strict_json_when_maxima_are_undefined():
    reject = lambda name: pytest.fail(f"{name} in JSON")
    nan_rows = stepcheck.records(_checks(manual_vs_autodiff=[math.nan] * 4, directional_jvp=[math.nan] * 4,
                                         smooth=[False] * 4), epoch=1)
    for rows in ([], nan_rows):
        s = json.loads(json.dumps(stepcheck.summary(rows)), parse_constant=reject)
        assert s["gradcheck_max_directional_fd"] is None and s["gradcheck_max_manual_vs_autodiff"] is None
    s = stepcheck.summary(nan_rows)
    assert s["gradchecks_failed"] == 3 and s["gradcheck_first_failed_step"] == 10   # NaN fails


def test_the_tolerance_is_the_checks_own_and_the_training_precision_is_information():
    """The check multiplies at full float32 on every backend, so its tolerance is
    2^10 float32 roundoffs whatever the training's products; matmul_roundoff says
    what those are, and training_precision_bound what they may cost."""
    assert stepcheck.tolerance() == 2.0 ** -14 <= 1e-4
    assert stepcheck.tolerance(2.0 ** -53) == 2.0 ** -43
    assert stepcheck.tolerances() == dict.fromkeys(stepcheck.COMPARISONS, 2.0 ** -14)
    assert stepcheck.tolerances(jnp.float64) == {"manual_vs_autodiff": 2.0 ** -43, "directional_jvp": 2.0 ** -43,
                                                 "directional_fd": 2.0 ** -14}
    roundoff = stepcheck.matmul_roundoff
    assert roundoff("cpu") == roundoff("cpu", "default") == roundoff("gpu", "highest") == 2.0 ** -24
    assert roundoff("gpu", "default") == roundoff("gpu", "fastest") == roundoff("cpu", "tensorfloat32") == 2.0 ** -11
    assert roundoff("tpu", "default") == roundoff("cpu", "bfloat16") == 2.0 ** -8
    assert roundoff("tpu", "float32") == roundoff("tpu", "highest") == 2.0 ** -24
    with jax.default_matmul_precision("tensorfloat32"):       # what a trace sees
        assert roundoff("cpu") == 2.0 ** -11
    spec = model.make_spec((16, 8))                            # 3 Dense layers: 6 products
    assert stepcheck.training_precision_bound(spec, 64, 2.0 ** -11) == pytest.approx(2 * 2.0 ** -11 * 6 * 8)
    assert stepcheck.training_precision_bound(spec, 16, 2.0 ** -8) == pytest.approx(2 * 2.0 ** -8 * 6 * 4)
    assert stepcheck.training_precision_bound(spec, 64, 2.0 ** -24) == 0.0


def test_check_every_must_be_a_whole_number_of_steps():
    from svhn_jax.errors import SvhnJaxError

    for bad in (-1, 1.5, "2"):
        with pytest.raises(SvhnJaxError, match="check_every must be an integer >= 0"):
            train.check_config(config()._replace(check_every=bad))
    assert train.check_config(config(every=0)).check_every == 0

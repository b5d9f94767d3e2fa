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


HP = train.Hyper(jnp.float32(3e-3), jnp.float32(3e-3))


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
    init, fwd, bwd = layers.LAYERS[layer]
    monkeypatch.setitem(layers.LAYERS, layer, layers.Layer(init, fwd, breaker(bwd)))
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
    assert stepcheck.first_failure(rows) is rows[0]
    assert stepcheck.summary(rows)["gradcheck_first_failed_step"] == 0


# ------------------------------------------------------------------ sweeps


def test_sweeps_check_every_configuration_in_autodiff_mode_with_batchnorm(data):
    X, y = data
    cfg, k, epochs = config((16,), "before", "autodiff", every=3), 2, 2
    hps = train.Hyper(jnp.asarray([1e-3, 3e-3], jnp.float32), jnp.asarray([0.0, 1e-2], jnp.float32))
    init = lambda cfg: jax.tree.map(lambda *a: jnp.stack(a), *[
        train.init_state(seed, cfg, IN_DIM, train.Hyper(hps.lr[i], hps.reg[i])) for i, seed in enumerate((0, 1))])
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
    with pytest.raises(GradCheckError, match=r"lacks leaf 2\.dense\.b"):
        jax.eval_shape(lambda: stepcheck.tree_vdot(no_last_bias, params, spec))
    transposed = (dict(params[0], W=params[0]["W"].T), params[1], params[2])
    with pytest.raises(GradCheckError, match=r"0\.dense\.W has shape \(8, 12\)"):
        stepcheck.paired_leaves(transposed, params, spec)
    expected = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in jax.tree.leaves(params))
    assert float(jax.jit(lambda: stepcheck.tree_vdot(params, params, spec))()) == pytest.approx(expected, rel=1e-6)


def test_the_check_names_a_missing_or_misshapen_gradient_leaf():
    spec, params, state, x, y = _small_problem()
    check = lambda grads: jax.eval_shape(lambda: stepcheck.check(
        params, state, x, y, grads, 0.0, jax.random.key(0), spec, "manual"))
    with pytest.raises(GradCheckError, match=r"hand gradient lacks leaf 2\.dense\.b"):
        check((params[0], params[1], {"W": params[2]["W"]}))
    with pytest.raises(GradCheckError, match=r"leaf 2\.dense\.b has shape \(1, 10\)"):
        check((params[0], params[1], dict(params[2], b=params[2]["b"][None])))
    assert check(params).manual_vs_autodiff.shape == ()


def test_direction_is_a_unit_sign_vector_shaped_like_the_parameters():
    _, params, _, _, _ = _small_problem(batchnorm="before")
    v = jax.jit(stepcheck.direction)(jax.random.key(3), params)
    assert jax.tree.structure(v) == jax.tree.structure(params)
    flat = np.concatenate([np.asarray(a).ravel() for a in jax.tree.leaves(v)])
    assert np.allclose(np.abs(flat), 1 / math.sqrt(flat.size)) and abs(np.sum(flat ** 2) - 1) < 1e-6
    assert 0.4 < np.mean(flat > 0) < 0.6


def test_a_kink_inside_the_step_sets_the_difference_aside():
    spec, params, state, x, y = _small_problem()
    # unit 0 of the first layer sits exactly at ReLU's kink for the first image
    params = (dict(params[0], b=params[0]["b"].at[0].set(-(x[0] @ params[0]["W"][:, 0]))),) + params[1:]
    grads = model.loss_and_grads_manual(params, state, x, y, spec)[1]
    c = jax.jit(lambda: stepcheck.check(params, state, x, y, grads, 0.0, jax.random.key(0), spec, "manual"))()
    assert not bool(c.smooth) and float(c.directional_fd) > TOL   # the difference straddles the kink
    row = {"step": 0, "epoch": 1, "directional_fd": float(c.directional_fd),
           "manual_vs_autodiff": float(c.manual_vs_autodiff), "smooth": False,
           "directional_jvp": float(c.directional_jvp)}
    assert stepcheck.passed(row)                                  # ... and does not count


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


# -------------------------------------------------------------- host side


def _checks(**fields):
    base = dict(checked=[True, False, True, True], step=[10, 11, 12, 13],
                manual_vs_autodiff=[1e-7, 0.0, 2e-7, 5e-1], directional_jvp=[3e-7, 0.0, 1e-6, 0.2],
                directional_fd=[2e-7, 0.0, 0.4, 0.3], smooth=[True, False, False, True])
    base.update(fields)
    return stepcheck.StepCheck(*(np.asarray(base[f]) for f in stepcheck.StepCheck._fields))


def test_records_passed_first_failure_message_and_summary_agree():
    rows = stepcheck.records(_checks(), epoch=2)
    assert [r["step"] for r in rows] == [10, 12, 13]
    assert list(rows[0]) == ["step", "epoch", "directional_fd", "manual_vs_autodiff", "smooth",
                             "directional_jvp", "passed"]
    assert rows[1] == {"step": 12, "epoch": 2, "directional_fd": 0.4, "manual_vs_autodiff": 2e-7,
                       "smooth": False, "directional_jvp": 1e-6, "passed": True}  # 0.4: set aside
    assert [r["passed"] for r in rows] == [True, True, False]
    assert stepcheck.first_failure(rows) is rows[2]
    msg = stepcheck.message(rows[2])
    assert "step 13 (epoch 2)" in msg and "5.0e-01" in msg and f"{TOL:.1e}" in msg
    s = stepcheck.summary(rows)
    assert s == {"gradchecks": 3, "gradchecks_failed": 1, "gradchecks_nonsmooth": 1,
                 "gradcheck_first_failed_step": 13, "gradcheck_max_manual_vs_autodiff": 0.5,
                 "gradcheck_max_directional_jvp": 0.2, "gradcheck_max_directional_fd": 0.3,
                 "gradcheck_tolerance": TOL}
    # a K-configuration result: pick one
    two = stepcheck.StepCheck(*(np.stack([a, a]) for a in _checks()))
    assert stepcheck.records(two, epoch=2, config=1) == rows


def test_summary_is_strict_json_when_maxima_are_undefined():
    reject = lambda name: pytest.fail(f"{name} in JSON")
    nan_rows = stepcheck.records(_checks(manual_vs_autodiff=[math.nan] * 4, directional_jvp=[math.nan] * 4,
                                         smooth=[False] * 4), epoch=1)
    for rows in ([], nan_rows):
        s = json.loads(json.dumps(stepcheck.summary(rows)), parse_constant=reject)
        assert s["gradcheck_max_directional_fd"] is None and s["gradcheck_max_manual_vs_autodiff"] is None
    s = stepcheck.summary(nan_rows)
    assert s["gradchecks_failed"] == 3 and s["gradcheck_first_failed_step"] == 10   # NaN fails


def test_tolerance_follows_the_matmul_precision():
    assert stepcheck.matmul_roundoff("cpu") == 2.0 ** -24
    assert stepcheck.matmul_roundoff("gpu", "default") == 2.0 ** -11
    assert stepcheck.matmul_roundoff("gpu", "highest") == 2.0 ** -24
    assert stepcheck.matmul_roundoff("tpu", "default") == 2.0 ** -8
    assert stepcheck.tolerance(2.0 ** -24) == 2.0 ** -14


def test_check_every_must_be_a_whole_number_of_steps():
    from svhn_jax.errors import SvhnJaxError

    for bad in (-1, 1.5, "2"):
        with pytest.raises(SvhnJaxError, match="check_every must be an integer >= 0"):
            train.check_config(config()._replace(check_every=bad))
    assert train.check_config(config(every=0)).check_every == 0

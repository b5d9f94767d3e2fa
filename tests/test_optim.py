"""Tests for svhn_jax.optim.

Each optimizer is compared, step by step, with a reference loop written here in
float64 NumPy straight from the papers' formulas (nothing from the module is
reused), with a constant learning rate and under two schedules. Then: schedule
values against hand-computed numbers, jit/vmap behaviour, dtypes, and the error
messages users see.
"""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svhn_jax.nn import optim
from svhn_jax.errors import SvhnJaxError

SHAPES = {"w": (3, 4), "b": (4,)}
N_STEPS = 8

# non-default hyperparameters, so swapped or ignored arguments show up
HYPER = {
    "sgd": {},
    "momentum": {"mu": 0.8},
    "nesterov": {"mu": 0.8},
    "rmsprop": {"decay": 0.95, "eps": 1e-6},
    "adam": {"b1": 0.8, "b2": 0.99, "eps": 1e-7},
}


# ---------------------------------------------------------------------------
# independent float64 NumPy references

def ref_sgd(p, grads, lr):
    p = {k: v.copy() for k, v in p.items()}
    out = []
    for t, g in enumerate(grads):
        for k in p:
            p[k] = p[k] - lr(t) * g[k]
        out.append({k: v.copy() for k, v in p.items()})
    return out


def ref_momentum(p, grads, lr, mu, nesterov=False):
    """PyTorch SGD(momentum=mu, nesterov=...) with dampening 0."""
    p = {k: v.copy() for k, v in p.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    out = []
    for t, g in enumerate(grads):
        for k in p:
            buf[k] = mu * buf[k] + g[k]
            step = g[k] + mu * buf[k] if nesterov else buf[k]
            p[k] = p[k] - lr(t) * step
        out.append({k: v.copy() for k, v in p.items()})
    return out


def ref_momentum_cs231n(p, grads, lr, mu):
    """CS231n sgd_momentum: v = mu v - lr dw; w = w + v."""
    p = {k: v.copy() for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    out = []
    for t, g in enumerate(grads):
        for k in p:
            vel[k] = mu * vel[k] - lr(t) * g[k]
            p[k] = p[k] + vel[k]
        out.append({k: v.copy() for k, v in p.items()})
    return out


def ref_rmsprop(p, grads, lr, decay, eps, eps_inside=False):
    p = {k: v.copy() for k, v in p.items()}
    cache = {k: np.zeros_like(v) for k, v in p.items()}
    out = []
    for t, g in enumerate(grads):
        for k in p:
            cache[k] = decay * cache[k] + (1 - decay) * g[k] ** 2
            denom = np.sqrt(cache[k] + eps) if eps_inside else np.sqrt(cache[k]) + eps
            p[k] = p[k] - lr(t) * g[k] / denom
        out.append({k: v.copy() for k, v in p.items()})
    return out


def ref_adam(p, grads, lr, b1, b2, eps):
    """Kingma & Ba (2015), Algorithm 1."""
    p = {k: v.copy() for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for i, g in enumerate(grads):
        t = i + 1
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v[k] / (1 - b2 ** t)
            p[k] = p[k] - lr(t - 1) * m_hat / (np.sqrt(v_hat) + eps)
        out.append({k: x.copy() for k, x in p.items()})
    return out


REFERENCES = {
    "sgd": ref_sgd,
    "momentum": ref_momentum,
    "nesterov": lambda p, g, lr, mu: ref_momentum(p, g, lr, mu, nesterov=True),
    "rmsprop": ref_rmsprop,
    "adam": ref_adam,
}


# learning rates: (module schedule or float, reference written by hand)
def _ref_warmup_cosine(t, lr=0.1, warm=2, total=6, final=0.1):
    if t < warm:
        return lr * (t + 1) / warm
    c = min(t - warm, total - warm) / (total - warm)
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * c)))


LEARNING_RATES = {
    "constant": (lambda: 0.05, lambda t: 0.05),
    "warmup-cosine": (
        lambda: optim.make_schedule("warmup-cosine", 0.1, total_steps=6,
                                    warmup_steps=2, final=0.1),
        _ref_warmup_cosine),
    "step": (lambda: optim.make_schedule("step", 0.1, rate=0.5, every=3),
             lambda t: 0.1 * 0.5 ** (t // 3)),
}


def _problem(seed):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(N_STEPS)]
    return params, grads


def _run(opt, params, grads):
    params = jax.tree.map(jnp.asarray, params)
    state = opt.init(params)
    out = []
    for g in grads:
        params, state = opt.update(jax.tree.map(jnp.asarray, g), state, params)
        out.append(params)
    return out, state


def _assert_trajectories_close(got, want, rtol=1e-12, atol=1e-12):
    assert len(got) == len(want)
    for t, (a, b) in enumerate(zip(got, want)):
        assert set(a) == set(b)
        for k in b:
            np.testing.assert_allclose(np.asarray(a[k]), b[k], rtol=rtol, atol=atol,
                                       err_msg=f"step {t}, leaf {k}")


@pytest.mark.parametrize("schedule", list(LEARNING_RATES))
@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_matches_float64_reference(name, schedule):
    make_lr, ref_lr = LEARNING_RATES[schedule]
    params, grads = _problem(seed=zlib.crc32(f"{name}/{schedule}".encode()))
    want = REFERENCES[name](params, grads, ref_lr, **HYPER[name])
    with jax.enable_x64(True):
        got, state = _run(optim.get(name, make_lr(), **HYPER[name]), params, grads)
        assert got[-1]["w"].dtype == jnp.float64
        assert state.step.dtype == jnp.int32 and int(state.step) == N_STEPS
    _assert_trajectories_close(got, want)
    # the parameters actually moved, by more than the tolerance
    assert np.max(np.abs(np.asarray(got[-1]["w"]) - params["w"])) > 1e-3


def test_quadratic_gradients_at_current_params():
    """Gradients that depend on the iterate (loss 0.5 * sum(a * p^2))."""
    rng = np.random.default_rng(7)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    curv = {k: rng.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
    # reference: Adam driven by g = a * p, written out again in NumPy
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, 7):
        for k in p:
            g = curv[k] * p[k]
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            p[k] = p[k] - 0.1 * (m[k] / (1 - 0.9 ** t)) / (
                np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
    with jax.enable_x64(True):
        opt = optim.adam(0.1)
        q = jax.tree.map(jnp.asarray, params)
        a = jax.tree.map(jnp.asarray, curv)
        state = opt.init(q)
        step = jax.jit(lambda q, s: opt.update(jax.tree.map(jnp.multiply, a, q), s, q))
        for _ in range(6):
            q, state = step(q, state)
        for k in p:
            np.testing.assert_allclose(np.asarray(q[k]), p[k], rtol=1e-12, atol=1e-12)


def test_momentum_convention_matters_under_a_schedule():
    """CS231n's v = mu v - lr g equals ours for constant lr, not under decay."""
    params, grads = _problem(seed=3)
    with jax.enable_x64(True):
        const, _ = _run(optim.momentum(0.05, mu=0.8), params, grads)
        decayed, _ = _run(optim.momentum(LEARNING_RATES["step"][0](), mu=0.8),
                          params, grads)
    _assert_trajectories_close(const, ref_momentum_cs231n(params, grads,
                                                          lambda t: 0.05, 0.8),
                               rtol=1e-10, atol=1e-10)
    cs231n = ref_momentum_cs231n(params, grads, LEARNING_RATES["step"][1], 0.8)
    diff = max(np.max(np.abs(np.asarray(decayed[-1][k]) - cs231n[-1][k])) for k in SHAPES)
    assert diff > 1e-3


def test_rmsprop_eps_placement_matters():
    params, grads = _problem(seed=4)
    grads = [{k: 1e-3 * g for k, g in gs.items()} for gs in grads]  # eps comparable
    with jax.enable_x64(True):
        got, _ = _run(optim.rmsprop(0.01, eps=1e-6), params, grads)
    _assert_trajectories_close(got, ref_rmsprop(params, grads, lambda t: 0.01, 0.9, 1e-6))
    inside = ref_rmsprop(params, grads, lambda t: 0.01, 0.9, 1e-6, eps_inside=True)
    assert max(np.max(np.abs(np.asarray(got[-1][k]) - inside[-1][k])) for k in SHAPES) > 1e-4


def test_any_pytree():
    """Tuples, lists, nesting and None work, and give the same numbers as a dict."""
    params, grads = _problem(seed=5)
    as_tree = lambda d: ({"layer": [d["w"]]}, (d["b"], None))
    flat, _ = _run(optim.adam(0.01), params, grads[:3])
    tree, state = _run(optim.adam(0.01), as_tree(params), [as_tree(g) for g in grads[:3]])
    np.testing.assert_array_equal(tree[-1][0]["layer"][0], flat[-1]["w"])
    np.testing.assert_array_equal(tree[-1][1][0], flat[-1]["b"])
    assert tree[-1][1][1] is None and state.m[1][1] is None


# ---------------------------------------------------------------------------
# schedules

def _values(schedule, steps):
    return [float(schedule(jnp.int32(s))) for s in steps]


def test_schedule_values():
    steps = [0, 1, 2, 3, 5, 6, 7, 12, 100]
    np.testing.assert_allclose(_values(optim.constant(0.1), [0, 7, 100]), [0.1] * 3,
                               rtol=1e-7)
    np.testing.assert_allclose(
        _values(optim.step_decay(0.1, rate=0.5, every=3), steps),
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.00625, 0.1 * 0.5 ** 33], rtol=1e-6)
    np.testing.assert_allclose(
        _values(optim.cosine(1.0, total_steps=10, final=0.1), [0, 5, 10, 20]),
        [1.0, 0.55, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(
        _values(optim.cosine(2.0, total_steps=4), [0, 1, 2, 3, 4, 9]),
        [2.0, 1 + math.sqrt(0.5), 1.0, 1 - math.sqrt(0.5), 0.0, 0.0], rtol=1e-6,
        atol=1e-7)
    np.testing.assert_allclose(
        _values(optim.warmup(optim.constant(0.2), steps=4), [0, 1, 3, 4, 100]),
        [0.05, 0.1, 0.2, 0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(
        _values(optim.warmup(0.2, steps=4), [0, 3, 4]), [0.05, 0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(  # warm-up prepended: cosine's clock starts at step 2
        _values(optim.warmup(optim.cosine(1.0, total_steps=10), steps=2),
                [0, 1, 2, 7, 12, 50]),
        [0.5, 1.0, 1.0, 0.5, 0.0, 0.0], rtol=1e-6, atol=1e-7)


def test_exponential_schedule_and_a_warmup_spec_without_its_length():
    """The range test's schedule: lr * ratio ** (step / steps). A schedule described
    without its length (or its warm-up's) is refused, not run with a default one."""
    from svhn_jax.nn import schedules

    sched = schedules.make_schedule("exponential", 1e-3, ratio=100.0, steps=10)
    np.testing.assert_allclose(_values(sched, [0, 5, 10, 20]), [1e-3, 1e-2, 1e-1, 10.0], rtol=1e-6)
    spec = schedules.ScheduleSpec("exponential", total_steps=10, ratio=100.0)
    np.testing.assert_allclose(_values(schedules.build(spec, 1e-3), [5]), [1e-2], rtol=1e-6)
    with pytest.raises(SvhnJaxError, match="warmup_steps must be an integer >= 1, got 0"):
        schedules.build(schedules.ScheduleSpec("warmup-cosine", total_steps=100), 1e-3)
    for name, what in (("cosine", "cosine total_steps"), ("exponential", "exponential steps")):
        with pytest.raises(SvhnJaxError, match=f"{what} must be an integer >= 1, got 0"):
            schedules.build(schedules.ScheduleSpec(name), 1e-3)   # nor one without its length


def test_make_schedule_values():
    mk = optim.make_schedule
    np.testing.assert_allclose(_values(mk("constant", 0.3), [0, 9]), [0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(_values(mk("step", 1.0, rate=0.1, every=2), [0, 2, 4]),
                               [1.0, 0.1, 0.01], rtol=1e-6)
    np.testing.assert_allclose(_values(mk("cosine", 1.0, total_steps=10), [0, 5, 10]),
                               [1.0, 0.5, 0.0], rtol=1e-6, atol=1e-7)
    # warmup-cosine: total_steps counts the warm-up, cosine ends at step 12
    np.testing.assert_allclose(
        _values(mk("warmup-cosine", 1.0, total_steps=12, warmup_steps=2, final=0.1),
                [0, 1, 2, 7, 12, 40]),
        [0.5, 1.0, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(
        _values(mk("warmup-step", 1.0, warmup_steps=2, rate=0.5, every=2),
                [0, 1, 2, 3, 4, 6]),
        [0.5, 1.0, 1.0, 1.0, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(_values(mk("warmup-constant", 0.4, warmup_steps=4), [1, 9]),
                               [0.2, 0.4], rtol=1e-6)


@pytest.mark.parametrize("name,kw", [
    ("constant", {}), ("step", {"rate": 0.5, "every": 3}),
    ("cosine", {"total_steps": 10, "final": 0.2}),
    ("warmup-cosine", {"total_steps": 10, "warmup_steps": 3}),
])
def test_schedules_jit_and_vmap(name, kw):
    schedule = optim.make_schedule(name, 0.1, **kw)
    steps = np.arange(15)
    eager = _values(schedule, steps)
    # float32: jit may fuse differently from eager, hence the atol near lr = 0
    np.testing.assert_allclose(jax.vmap(schedule)(jnp.arange(15)), eager, rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(jax.jit(schedule)(jnp.arange(15)), eager, rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose([float(jax.jit(schedule)(jnp.int32(s))) for s in (0, 9)],
                               [eager[0], eager[9]], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(lr=st.floats(1e-5, 1.0), total=st.integers(1, 50), warm=st.integers(1, 10),
       final=st.floats(0.0, 1.0))
def test_warmup_cosine_bounds(lr, total, warm, final):
    schedule = optim.make_schedule("warmup-cosine", lr, total_steps=total + warm,
                                   warmup_steps=warm, final=final)
    # one fixed-length step array, so no example triggers a new compilation
    values = np.asarray(schedule(jnp.arange(72)), np.float64)[:total + warm + 5]
    assert np.all(values[:warm] > 0) and np.all(values >= 0)
    assert np.all(values <= lr * (1 + 1e-6))
    assert np.all(np.diff(values[:warm]) > 0)           # ramps up
    assert np.all(np.diff(values[warm:]) <= 1e-6 * lr)  # then never increases
    np.testing.assert_allclose(values[total + warm:], max(final * lr, 0.0),
                               rtol=1e-5, atol=1e-7 * lr)


# ---------------------------------------------------------------------------
# jit, vmap, dtypes

LRS = [1e-3, 1e-2, 1e-1]


def _train(name, lr, params, curv, n=5):
    """n updates on the quadratic 0.5 * sum(curv * p^2); builds the optimizer itself."""
    opt = optim.get(name, lr)
    state = opt.init(params)
    for _ in range(n):
        params, state = opt.update(jax.tree.map(jnp.multiply, curv, params), state, params)
    return params, state


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_vmap_over_learning_rates_equals_separate_runs(name):
    rng = np.random.default_rng(11)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    curv = {k: jnp.asarray(rng.uniform(0.5, 2, size=s), jnp.float32)
            for k, s in SHAPES.items()}
    swept, state = jax.jit(jax.vmap(lambda lr: _train(name, lr, params, curv)))(
        jnp.asarray(LRS, jnp.float32))
    for i, lr in enumerate(LRS):
        single, _ = _train(name, lr, params, curv)
        for k in SHAPES:
            assert swept[k].dtype == jnp.float32
            np.testing.assert_allclose(swept[k][i], single[k], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_vmap_over_scheduled_learning_rates(name):
    """A traced base lr goes through make_schedule without tripping validation."""
    rng = np.random.default_rng(12)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    curv = jax.tree.map(jnp.ones_like, params)
    sched = lambda lr: optim.make_schedule("warmup-cosine", lr, total_steps=5,
                                           warmup_steps=2)
    swept, _ = jax.vmap(lambda lr: _train(name, sched(lr), params, curv))(
        jnp.asarray(LRS, jnp.float32))
    for i, lr in enumerate(LRS):
        single, _ = _train(name, sched(lr), params, curv)
        for k in SHAPES:
            np.testing.assert_allclose(swept[k][i], single[k], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_float32_stays_float32_with_x64(name):
    with jax.enable_x64(True):
        params = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
        for lr in (0.1, np.float64(0.1), jnp.float64(0.1),
                   optim.make_schedule("warmup-cosine", 0.1, total_steps=5,
                                       warmup_steps=2)):
            opt = optim.get(name, lr)
            state = opt.init(params)
            new, state = jax.jit(opt.update)(params, state, params)
            new, state = opt.update(params, state, new)
            for leaf in jax.tree.leaves((new, state[1:])):
                assert leaf.dtype == jnp.float32
            assert state.step.dtype == jnp.int32 and int(state.step) == 2


def test_update_under_scan():
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    opt = optim.get("nesterov", 0.1)

    def body(carry, _):
        p, s = carry
        return opt.update(p, s, p), None

    (p, s), _ = jax.lax.scan(body, (params, opt.init(params)), length=4)
    q, t = params, opt.init(params)
    for _ in range(4):
        q, t = opt.update(q, t, q)
    np.testing.assert_allclose(p["w"], q["w"], rtol=1e-6)
    assert int(s.step) == 4


# ---------------------------------------------------------------------------
# errors users see

@pytest.mark.parametrize("lr", [0, 0.0, -1, float("nan"), float("inf"), np.float32(-1)])
@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_bad_learning_rate(name, lr):
    with pytest.raises(SvhnJaxError, match="learning rate must be a finite number > 0"):
        optim.get(name, lr)


@pytest.mark.parametrize("lr, match", [
    ("0.1", "learning rate must be a number"), (True, "must be a number, got bool"),
    (np.ones(3), "must be a scalar"),
])
def test_learning_rate_type(lr, match):
    with pytest.raises(SvhnJaxError, match=match):
        optim.sgd(lr)


@pytest.mark.parametrize("name, kw, match", [
    ("momentum", {"mu": 1.0}, r"momentum mu must be in \[0, 1\), got 1.0"),
    ("nesterov", {"mu": -0.1}, r"momentum mu must be in \[0, 1\)"),
    ("rmsprop", {"decay": 1.5}, r"rmsprop decay must be in \[0, 1\)"),
    ("rmsprop", {"eps": 0.0}, "rmsprop eps must be a finite number > 0"),
    ("adam", {"b1": float("nan")}, r"adam b1 must be in \[0, 1\)"),
    ("adam", {"b2": 1.0}, r"adam b2 must be in \[0, 1\)"),
    ("adam", {"eps": -1e-8}, "adam eps must be a finite number > 0"),
    ("sgd", {"mu": 0.9}, "optimizer 'sgd' does not take mu; it takes no options"),
    ("nesterov", {"nesterov": False}, "does not take nesterov; it takes mu"),
])
def test_bad_hyperparameters(name, kw, match):
    with pytest.raises(SvhnJaxError, match=match):
        optim.get(name, 0.1, **kw)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(SvhnJaxError, match="unknown optimizer 'adamw'") as info:
        optim.get("adamw", 0.1)
    for name in ("sgd", "momentum", "nesterov", "rmsprop", "adam"):
        assert name in str(info.value)


@pytest.mark.parametrize("call, match", [
    (lambda: optim.make_schedule("linear", 0.1), "unknown schedule 'linear'; choose one "
     "of constant, step, cosine, warmup-constant, warmup-step, warmup-cosine"),
    (lambda: optim.make_schedule("cosine", 0.1), "schedule 'cosine' needs total_steps"),
    (lambda: optim.make_schedule("warmup-cosine", 0.1, total_steps=10),
     "needs warmup_steps"),
    (lambda: optim.make_schedule("step", 0.1, rate=0.5, every=2, final=0.1),
     "schedule 'step' does not take final; it takes rate, every"),
    (lambda: optim.make_schedule("warmup-cosine", 0.1, total_steps=5, warmup_steps=5),
     r"total_steps \(5\) must exceed warmup_steps \(5\)"),
    (lambda: optim.make_schedule("warmup-cosine", 0.1, total_steps=1, warmup_steps=1),
     r"total_steps \(1\) must exceed warmup_steps \(1\)"),
    (lambda: optim.make_schedule("warmup-cosine", 0.1, total_steps=5, warmup_steps=2, rate=0.5),
     "schedule 'warmup-cosine' does not take rate; it takes warmup_steps, total_steps, final"),
    (lambda: optim.make_schedule("constant", -0.1), "learning rate must be a finite"),
    (lambda: optim.step_decay(0.1, rate=0.5, every=0), "every must be an integer >= 1"),
    (lambda: optim.step_decay(0.1, rate=0.0, every=2), "rate must be a finite number > 0"),
    (lambda: optim.cosine(0.1, total_steps=2.5), "total_steps must be an integer >= 1"),
    (lambda: optim.cosine(0.1, total_steps=10, final=2), r"final must be in \[0, 1\]"),
    (lambda: optim.warmup(0.1, steps=0), "warmup steps must be an integer >= 1"),
])
def test_bad_schedules(call, match):
    with pytest.raises(SvhnJaxError, match=match):
        call()


PARAMS = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_gradient_tree_mismatch(name, jit):
    opt = optim.get(name, 0.1)
    state = opt.init(PARAMS)
    update = jax.jit(opt.update) if jit else opt.update
    extra = dict(PARAMS, c=np.ones(2, np.float32))
    with pytest.raises(SvhnJaxError, match=r"gradient tree does not match the parameter "
                       r"tree: gradients have \['c'\] not in the parameters"):
        update(extra, state, PARAMS)
    missing = {"w": PARAMS["w"]}
    with pytest.raises(SvhnJaxError, match=r"gradients lack \['b'\] present in the "
                       r"parameters"):
        update(missing, state, PARAMS)
    wrong = dict(PARAMS, b=np.zeros(4, np.float32))
    with pytest.raises(SvhnJaxError, match=r"leaf \['b'\] has shape \(4,\) in the "
                       r"gradients but \(3,\) in the parameters"):
        update(wrong, state, PARAMS)
    # the same leaf paths in another container (a list for a tuple): still named a mismatch
    as_tuple = (PARAMS["w"], PARAMS["b"])
    with pytest.raises(SvhnJaxError, match=r"gradient tree does not match the parameter tree: "
                       r"structures differ"):
        opt.update(list(as_tuple), opt.init(as_tuple), as_tuple)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "rmsprop", "adam"])
def test_parameter_tree_does_not_match_state(name):
    opt = optim.get(name, 0.1)
    state = opt.init(PARAMS)
    extra = dict(PARAMS, c=np.ones(2, np.float32))
    with pytest.raises(SvhnJaxError, match=r"parameter tree does not match the optimizer "
                       r"state: parameters have \['c'\] not in the state slot"):
        opt.update(extra, state, extra)
    wrong = dict(PARAMS, w=np.ones((3, 2), np.float32))
    with pytest.raises(SvhnJaxError, match=r"parameter tree does not match the optimizer "
                       r"state: leaf \['w'\] has shape \(3, 2\) in the parameters but "
                       r"\(2, 3\) in the state slot"):
        jax.jit(opt.update)(wrong, state, wrong)


def test_wrong_state_type_and_integer_params():
    with pytest.raises(SvhnJaxError, match="sgd: expected a SgdState .* got AdamState"):
        optim.sgd(0.1).update(PARAMS, optim.adam(0.1).init(PARAMS), PARAMS)
    with pytest.raises(SvhnJaxError, match=r"parameter \['n'\] has dtype int32"):
        optim.adam(0.1).init({"n": np.zeros(2, np.int32)})


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        optim.get("nope", 0.1)


# ---------------------------------------------------------------------------
# documented defaults (issue 13, item 5)

DOCUMENTED = {
    "sgd": {},
    "momentum": {"mu": 0.9},
    "nesterov": {"mu": 0.9},
    "rmsprop": {"decay": 0.9, "eps": 1e-8},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
}
# each documented value changed to a plausible other convention's
OTHER = {"mu": 0.99, "decay": 0.99, "eps": 1e-7, "b1": 0.8, "b2": 0.99}


def _defaults_problem():
    """Gradients of order 1 on "w" and 1e-8 on "b", where eps is as large as sqrt(s)."""
    params, grads = _problem(seed=13)
    return params, [{"w": g["w"], "b": 1e-8 * g["b"]} for g in grads]


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_documented_defaults_are_the_ones_used(name):
    params, grads = _defaults_problem()
    with jax.enable_x64(True):
        default, _ = _run(optim.get(name, 0.01), params, grads)
        explicit, _ = _run(optim.get(name, 0.01, **DOCUMENTED[name]), params, grads)
        others = {k: _run(optim.get(name, 0.01, **dict(DOCUMENTED[name], **{k: OTHER[k]})), params, grads)[0]
                  for k in DOCUMENTED[name]}
    for a, b in zip(default, explicit):
        for k in SHAPES:
            np.testing.assert_array_equal(a[k], b[k])
    _assert_trajectories_close(default, REFERENCES[name](params, grads, lambda t: 0.01, **DOCUMENTED[name]))
    for k, other in others.items():   # every documented value matters on this problem
        diff = max(np.max(np.abs(np.asarray(other[-1][leaf]) - np.asarray(default[-1][leaf]))) for leaf in SHAPES)
        assert diff > 1e-6, f"{name}: changing {k} to {OTHER[k]} changed nothing"


def test_cosine_decays_to_zero_by_default():
    steps = np.arange(0, 25)
    want = 0.3 * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, 10) / 10))   # final 0
    for schedule in (optim.cosine(0.3, total_steps=10), optim.make_schedule("cosine", 0.3, total_steps=10),
                     optim.cosine(0.3, total_steps=10, final=0.0)):
        np.testing.assert_allclose(_values(schedule, steps), want, rtol=1e-6, atol=1e-8)
    assert _values(optim.cosine(0.3, total_steps=10), [10, 24]) == [0.0, 0.0]


def test_warmup_semantics_on_a_trajectory():
    """The first update uses lr0 / steps, update number `steps` uses lr0, then the wrapped
    schedule starts from its own step 0: sgd with constant gradients moves by sum(lr_t)."""
    base = optim.step_decay(0.4, rate=0.5, every=2)
    lrs = [0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1]   # 4 warm-up steps, then 0.4 * 0.5 ** (t // 2)
    with jax.enable_x64(True):
        opt = optim.sgd(optim.warmup(base, steps=4))
        p, state = {"w": jnp.zeros(2)}, None
        state = opt.init(p)
        seen = []
        for _ in lrs:
            new, state = opt.update({"w": jnp.ones(2)}, state, p)
            seen.append(float(p["w"][0] - new["w"][0]))
            p = new
    np.testing.assert_allclose(seen, lrs, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(p["w"]), -sum(lrs), rtol=1e-12)

"""Exact values of every error measure gradcheck reports, and its tree-structure check.

Known inputs, known outputs, worked out by hand in the comments: a changed
denominator, a dropped floor or a leaf of size 1 reported as 0 shows up here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.nn import gradcheck
from svhn_jax.nn.gradcheck import GradCheckError, rel_error

U = 2.0 ** -53  # float64 unit roundoff


@pytest.mark.parametrize("a,b,floor,want", [
    ([1.0, 2.0], [1.0, 2.5], 1e-8, 0.5 / 4.5),   # max|a-b| = 0.5, max(|a|+|b|) = 4.5
    ([1.0, 0.0], [0.0, 1.0], 1e-8, 1.0),         # max(|a|+|b|) = 1, not max|a| + max|b| = 2
    ([-3.0, 1.0], [3.0, 1.0], 1e-8, 1.0),        # a sign flip: error 6 / 6
    ([[2.0, -1.0]], [[2.0, -1.5]], 1e-8, 0.5 / 4.0),  # any shape, the max over all entries
    ([3.0], [1.0], 1e-8, 0.5),                   # size 1: 2 / 4, not 0
    ([0.0], [0.0], 1e-8, 0.0),
    ([0.0, 0.0], [1e-9, 0.0], 1e-8, 0.1),        # below the floor: 1e-9 / 1e-8
    ([0.0, 0.0], [1e-9, 0.0], 1e-6, 1e-3),       # the floor is a parameter
    ([1.0, 0.0], [1.5, 0.0], 1e-6, 0.5 / 2.5),   # a floor below the scale changes nothing
    ([1.0, 0.0], [1.5, 0.0], 10.0, 0.05),        # a floor above it does
])
def test_rel_error_known_values(a, b, floor, want):
    assert rel_error(a, b, floor) == pytest.approx(want, rel=1e-15)
    assert rel_error(b, a, floor) == pytest.approx(want, rel=1e-15)  # symmetric


def test_rel_error_default_floor_is_1e_minus_8():
    assert rel_error([0.0], [2e-9]) == pytest.approx(0.2, rel=1e-15)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0)])
def test_rel_error_of_empty_leaves_is_zero(shape):
    assert rel_error(np.zeros(shape), np.zeros(shape)) == 0.0


@pytest.mark.parametrize("a,b", [
    ([1.0, np.nan], [1.0, 2.0]), ([1.0, 2.0], [np.nan, 2.0]), ([np.nan], [np.nan]),
    ([np.inf], [1.0]), ([np.inf], [np.inf]), ([-np.inf, 0.0], [np.inf, 0.0]),
])
def test_rel_error_of_non_finite_values_is_nan_and_never_within_tolerance(a, b):
    e = rel_error(a, b)
    assert math.isnan(e)
    assert not e <= gradcheck.TOL_FINITE_DIFF


def test_rel_error_refuses_to_broadcast():
    with pytest.raises(GradCheckError, match=r"different shapes \(3,\) and \(1,\)"):
        rel_error(np.ones(3), np.ones(1))


def test_autodiff_noise_formula():
    assert gradcheck.AD_ROUNDING == 1024
    assert gradcheck.autodiff_noise(3.0) == pytest.approx(1024 * U * 3.0, rel=1e-15)
    assert gradcheck.autodiff_noise(3.0, 50.0) == pytest.approx(1024 * U * 150.0, rel=1e-15)
    assert gradcheck.autodiff_noise(0.0) == 0.0


def test_fd_noise_formula():
    # FD_ROUNDING * u * max(|L|, 1) / h, the constants stated once in gradcheck
    assert gradcheck.FD_ROUNDING == 64 and gradcheck.FD_STEP == 1e-5 and gradcheck.UNIT_ROUNDOFF == U
    assert gradcheck.fd_noise(2.5) == pytest.approx(64 * U * 2.5 / 1e-5, rel=1e-15)
    assert gradcheck.fd_noise(-2.5) == gradcheck.fd_noise(2.5)
    assert gradcheck.fd_noise(0.01) == pytest.approx(64 * U / 1e-5, rel=1e-15)  # |L| < 1 counts as 1
    assert gradcheck.fd_noise(2.5, h=1e-3) == pytest.approx(64 * U * 2.5 / 1e-3, rel=1e-15)


def _quintic(p):
    return jnp.sum(p["w"] ** 5)


def test_finite_diff_is_richardson_extrapolated_with_its_spread():
    """For p^5: D(h) = 5p^4 + 10p^2 h^2 + h^4, so R(h) = (4 D(h) - D(2h)) / 3 = 5p^4 - 4h^4,
    R(2h) = 5p^4 - 64h^4 and the spread |R(h) - R(2h)| = 60h^4 exactly.

    A large h makes each term visible: plain central differences would be off by
    10p^2 h^2 ~ 1e-3, a wrong extrapolation weight by more than 1e-6."""
    h = 1e-2
    with gradcheck.float64():
        fd = gradcheck.finite_diff(_quintic, {"w": jnp.array([0.5, -1.0, 2.0])}, h=h)
    w = np.array([0.5, -1.0, 2.0])
    np.testing.assert_array_equal(fd.picks[0], [0, 1, 2])
    # rounding u L / h ~ 4e-13 and, for the spread, u L / 4h times the weights
    np.testing.assert_allclose(fd.values[0], 5 * w ** 4 - 4 * h ** 4, rtol=0, atol=1e-11)
    np.testing.assert_allclose(fd.spread[0], 60 * h ** 4, rtol=0, atol=1e-11)
    assert fd.loss == pytest.approx(np.sum(w ** 5), rel=1e-15)


def _two_leaves(p, scale):
    return scale * (jnp.sum(p[0] ** 2) + jnp.sum(jnp.sin(p[1])))


def test_finite_diff_samples_entries_per_leaf_and_passes_extra_arguments():
    with gradcheck.float64():
        p = (jnp.arange(12.0).reshape(3, 4) / 10, jnp.array([0.3, -0.2]))
        fd = gradcheck.finite_diff(_two_leaves, p, jnp.float64(3.0), samples=5, rng=np.random.default_rng(0))
    picks, values = fd.picks, fd.values
    assert len(picks[0]) == 5 and len(set(picks[0])) == 5 and list(picks[0]) == sorted(picks[0])
    np.testing.assert_array_equal(picks[1], [0, 1])       # leaves smaller than `samples`: all entries
    np.testing.assert_allclose(values[0], 3 * 2 * (np.arange(12) / 10)[picks[0]], rtol=1e-9)
    np.testing.assert_allclose(values[1], 3 * np.cos([0.3, -0.2]), rtol=1e-9)
    assert all(np.all(s < 1e-8) for s in fd.spread)       # smooth: the twins agree
    assert fd.loss == pytest.approx(3 * (np.sum((np.arange(12) / 10) ** 2) + np.sum(np.sin([0.3, -0.2]))))


def test_finite_diff_draws_distinct_entries_with_the_callers_generator():
    with gradcheck.float64():
        p = (jnp.arange(12.0).reshape(3, 4) / 10, jnp.array([0.3, -0.2]))
        picks = [gradcheck.finite_diff(_two_leaves, p, jnp.float64(3.0), samples=5,
                                       rng=np.random.default_rng(seed)).picks[0] for seed in (1, 2)]
    for seed, pick in zip((1, 2), picks):
        np.testing.assert_array_equal(pick, np.sort(np.random.default_rng(seed).choice(12, 5, replace=False)))
    assert list(picks[0]) != list(picks[1])


def test_the_sharded_check_extrapolates_its_differences_the_same_way():
    """distcheck's own loop over entries (a sharded loss is not mapped): for sum(p^5)
    at h = 1e-2, R(h) = 5p^4 - 4h^4 and the spread is 60h^4 exactly (see the test
    above), on distinct entries drawn with the caller's generator."""
    from svhn_jax.nn import distcheck

    w, h = np.array([0.5, -1.0, 2.0, 1.5, -0.7, 0.9]), 1e-2
    loss = lambda v: float(np.sum(np.asarray(v, np.float64) ** 5))
    fd = distcheck._finite_diff(loss, w, [2, 4], h, None, np.random.default_rng(0))
    np.testing.assert_array_equal(fd.picks[0], [0, 1])
    np.testing.assert_allclose(np.concatenate(fd.values), 5 * w ** 4 - 4 * h ** 4, rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.concatenate(fd.spread), 60 * h ** 4, rtol=0, atol=1e-11)
    assert fd.loss == pytest.approx(np.sum(w ** 5), rel=1e-15)
    sampled = distcheck._finite_diff(loss, np.linspace(-1, 1, 40), [30, 10], h, 6, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(sampled.picks[0], np.sort(rng.choice(30, 6, replace=False)))
    np.testing.assert_array_equal(sampled.picks[1], np.sort(rng.choice(10, 6, replace=False)))
    np.testing.assert_allclose(sampled.values[1], 5 * np.linspace(-1, 1, 40)[30:][sampled.picks[1]] ** 4
                               - 4 * h ** 4, rtol=0, atol=1e-11)


def _relu_sum(p):
    return jnp.sum(jnp.maximum(p["w"], 0.0))


def test_finite_diff_spread_flags_a_kink():
    """max(w, 0) at w = 1.5e-5 = 1.5 h: the steps 2h and 4h cross the kink, h does not."""
    with gradcheck.float64():
        fd = gradcheck.finite_diff(_relu_sum, {"w": jnp.array([1.5e-5, 1.0])})
    assert fd.spread[0][0] > 0.1 and fd.spread[0][1] < 1e-9
    assert fd.values[0][1] == pytest.approx(1.0, rel=1e-9)


# --------------------------------------------------- the noise floor in _compare


def _compare_one(manual, fd, loss_value=2.0, spread=None):
    """_compare on one leaf whose jax.grad gradient equals the hand one, so that
    only the finite-difference comparison can fail."""
    manual, fd = np.asarray(manual, np.float64), np.asarray(fd, np.float64)
    spread = np.zeros(fd.size) if spread is None else np.asarray(spread, np.float64)
    finite = gradcheck.FiniteDiff([np.arange(fd.size)], [fd], [spread], loss_value)
    rows, failures = gradcheck._compare(gradcheck.path_namer(("g",)), (manual,), (manual,), finite)
    assert rows[0]["manual_vs_autodiff"] == 0.0
    assert rows[0]["autodiff_vs_finite_diff"] == rows[0]["manual_vs_finite_diff"]
    return rows[0], failures


FD_FAILURE = "g: hand-written gradient differs from finite differences"


def test_compare_forgives_exactly_the_rounding_floor():
    noise = gradcheck.fd_noise(2.0)  # 64 u 2 / 1e-5, about 1.4e-9
    tiny = np.array([1e-6, -2e-6])  # a leaf of tiny gradients: scale 4e-6 << noise / TOL
    row, failures = _compare_one(tiny + [0.9 * noise, 0.0], tiny)
    assert failures == [] and row["manual_vs_finite_diff"] == pytest.approx(0.9e-6, rel=1e-12)
    row, failures = _compare_one(tiny + [1.1 * noise, 0.0], tiny)
    assert row["manual_vs_finite_diff"] == pytest.approx(1.1e-6, rel=1e-12)
    assert failures == [f"{FD_FAILURE} (rel error 1.10e-06 > 1e-06)"]


def test_compare_is_relative_above_the_floor():
    big = np.array([1.0, -0.5, 0.25])
    row, failures = _compare_one(big * (1 + 0.9e-6), big)
    assert failures == [] and row["manual_vs_finite_diff"] == pytest.approx(0.9e-6 / (2 + 0.9e-6), rel=1e-9)
    row, failures = _compare_one(big + [0.0, 0.0, 3e-6], big)   # 3e-6 / 2: over the tolerance
    assert failures == [f"{FD_FAILURE} (rel error 1.50e-06 > 1e-06)"]


def test_compare_floor_grows_with_the_loss():
    tiny = np.array([1e-6])
    fd_fails = lambda loss_value: _compare_one(tiny + 1e-9, tiny, loss_value)[1] != []
    assert fd_fails(1.0)           # noise(1) = 64 u / 1e-5 = 7.1e-10 < 1e-9
    assert fd_fails(0.1)           # |L| < 1 counts as 1
    assert fd_fails(-1.2)          # 8.5e-10
    assert not fd_fails(2.0)       # 1.4e-9
    assert not fd_fails(-10.0)


def test_compare_sets_aside_exactly_the_entries_that_are_not_smooth():
    """spread > TOL * leaf scale (2 max|grad| here, 2.0): the entry is not compared."""
    g = np.array([1.0, -0.5, 0.25])
    garbage = np.array([1.0, 7.0, 0.25])              # a kink ruined entry 1's difference
    row, failures = _compare_one(g, garbage, spread=[0.0, 2.01e-6, 0.0])
    assert failures == [] and row["fd_set_aside"] == 1 and row["fd_entries"] == 2
    row, failures = _compare_one(g, garbage, spread=[0.0, 1.99e-6, 0.0])   # smooth: compared, fails
    assert row["fd_set_aside"] == 0 and row["fd_entries"] == 3
    assert row["manual_vs_finite_diff"] == pytest.approx(7.5 / 7.5)
    assert failures == [f"{FD_FAILURE} (rel error 1.00e+00 > 1e-06)"]
    # a wrong hand gradient at a smooth entry fails whatever the other entries do
    row, failures = _compare_one(g * [1, 1, -1], garbage, spread=[0.0, 1.0, 0.0])   # 0.5 / 2
    assert row["fd_set_aside"] == 1 and failures == [f"{FD_FAILURE} (rel error 2.50e-01 > 1e-06)"]


def test_the_tolerances_are_inclusive():
    """'At most': an error equal to its tolerance passes, and an entry whose spread
    equals the set-aside threshold is compared, not set aside."""
    finite = gradcheck.FiniteDiff([np.arange(1)], [np.zeros(1)], [np.zeros(1)], 1.0)
    rows, failures = gradcheck._compare(gradcheck.path_namer(("g",)), (np.array([1e-18]),), (np.zeros(1),),
                                        finite)
    assert rows[0]["manual_vs_autodiff"] == gradcheck.TOL_AUTODIFF and failures == []   # 1e-18 / floor 1e-8
    g, garbage = np.array([1.0, -0.5, 0.25]), np.array([1.0, 7.0, 0.25])
    row, failures = _compare_one(g, garbage, spread=[0.0, 2e-6, 0.0])   # TOL * scale = 1e-6 * 2.0 exactly
    assert row["fd_set_aside"] == 0 and failures == [f"{FD_FAILURE} (rel error 1.00e+00 > 1e-06)"]


def test_compare_autodiff_floor_scales_with_the_largest_gradient_and_the_amplification():
    """A leaf of tiny gradients next to a leaf of size G is compared to
    AD_ROUNDING u A G in absolute terms; a large leaf keeps the relative 1e-10."""
    big, tiny = np.array([2.0, -1.0]), np.array([1e-9, 0.0])
    noise = gradcheck.autodiff_noise(2.0)                   # 1024 u 2, about 2.3e-13
    finite = gradcheck.FiniteDiff([np.arange(2)] * 2, [big, tiny], [np.zeros(2)] * 2, 1.0)

    def errors(manual, *amplification):
        rows, failures = gradcheck._compare(gradcheck.path_namer(("big", "tiny")), manual, (big, tiny),
                                            finite, *amplification)
        return [r["manual_vs_autodiff"] for r in rows], failures

    (e_big, e_tiny), failures = errors((big, tiny + [0.9 * noise, 0.0]))
    assert e_big == 0.0 and e_tiny == pytest.approx(0.9e-10, rel=1e-9) and failures == []
    (_, e_tiny), failures = errors((big, tiny + [1.1 * noise, 0.0]))
    assert e_tiny == pytest.approx(1.1e-10, rel=1e-9)
    assert failures == ["tiny: hand-written gradient differs from jax.grad (rel error 1.10e-10 > 1e-10)"]
    assert errors((big, tiny + [1.1 * noise, 0.0]), 1.0) == ([0.0, e_tiny], failures)   # A = 1 by default
    (_, e_tiny), failures = errors((big, tiny + [1.1 * noise, 0.0]), 2.0)
    assert e_tiny == pytest.approx(0.55e-10, rel=1e-9) and failures == []
    (e_big, _), failures = errors((big * (1 + 2e-10), tiny))   # 4e-10 / 4: the relative tolerance
    assert e_big == pytest.approx(1e-10, rel=1e-6)


def test_amplification_is_the_product_of_batchnorm_condition_numbers():
    """max(1, max_j max_n |x_nj| / sqrt(var_j + eps)) per BatchNorm layer in train mode."""
    spec = (("batchnorm", 2), ("batchnorm", 2))
    with gradcheck.float64():
        params = ({"gamma": jnp.array([1.0, 2.0]), "beta": jnp.array([0.0, 3.0])},) * 2
        state = ({"mean": jnp.zeros(2), "var": jnp.ones(2)},) * 2
        x = jnp.array([[1.0, 5.0], [1.0, 5.001], [1.0, 4.999]])
        amp = float(gradcheck.rounding_amplification(spec, params, state, x, True))
        eval_amp = float(gradcheck.rounding_amplification(spec, params, state, x, False))
    xn = np.asarray(x)
    k1 = np.max(np.max(np.abs(xn), 0) / np.sqrt(xn.var(0) + 1e-5))    # unit 0 is constant: 1 / sqrt(eps)
    y = (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5) * [1.0, 2.0] + [0.0, 3.0]
    k2 = max(1.0, np.max(np.max(np.abs(y), 0) / np.sqrt(y.var(0) + 1e-5)))
    assert amp == pytest.approx(k1 * k2, rel=1e-9) and k1 > 300
    assert eval_amp == 1.0


# ------------------------------------------------------------- tree structure


def _params():
    return ({"W": jnp.zeros((3, 4)), "b": jnp.zeros(4)}, {}, {"W": jnp.zeros((4, 2)), "b": jnp.zeros(2)})


SPEC = (("dense", 4), ("relu", 4), ("dense", 2))
NAME = gradcheck.path_namer(("0.dense", "1.relu", "2.dense"))


def test_leaf_names_and_path_namer():
    assert gradcheck.leaf_names(SPEC, _params()) == ["0.dense.W", "0.dense.b", "2.dense.W", "2.dense.b"]
    assert gradcheck.leaf_names(SPEC, _params(), prefix="m") == ["m0.dense.W", "m0.dense.b",
                                                                 "m2.dense.W", "m2.dense.b"]
    with pytest.raises(GradCheckError, match="a tree of 2 layers for a spec of 3 layers"):
        gradcheck.leaf_names(SPEC, _params()[:2])
    name = gradcheck.path_namer(("dense", "x"))
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(({"W": 1, "b": 2}, 3, [4]))[0]]
    assert [name(p) for p in paths] == ["dense.W", "dense.b", "x", "2.0"]


def test_tree_mismatch_names_missing_extra_and_misshapen_leaves():
    ref = _params()
    assert gradcheck.tree_mismatch(_params(), ref) is None
    dropped = (ref[0], ref[1], {"W": ref[2]["W"]})
    assert gradcheck.tree_mismatch(dropped, ref, what="hand gradient", ref_what="params", name=NAME) == \
        "the hand gradient lacks 2.dense.b (present in the params)"
    extra = (ref[0], {"gamma": jnp.ones(4)}, ref[2])
    assert gradcheck.tree_mismatch(extra, ref, name=NAME) == \
        "the tree has 1.relu.gamma (absent from the reference)"
    transposed = (ref[0], ref[1], {"W": jnp.zeros((2, 4)), "b": ref[2]["b"]})
    assert gradcheck.tree_mismatch(transposed, ref, name=NAME) == \
        "2.dense.W has shape (2, 4) in the tree but (4, 2) in the reference"
    as_list = [ref[0], ref[1], ref[2]]
    assert "the tree is a PyTreeDef([" in gradcheck.tree_mismatch(as_list, ref, name=NAME)
    with pytest.raises(GradCheckError, match=r"lacks 2\.dense\.b"):
        gradcheck.check_tree(dropped, ref, name=NAME)


def test_tree_mismatch_works_under_jit():
    ref = _params()

    @jax.jit
    def f(tree):
        gradcheck.check_tree(tree, ref, name=NAME)
        return tree

    f(_params())
    with pytest.raises(GradCheckError, match=r"2\.dense\.b has shape \(3,\) in the tree"):
        f((ref[0], ref[1], {"W": ref[2]["W"], "b": jnp.zeros(3)}))

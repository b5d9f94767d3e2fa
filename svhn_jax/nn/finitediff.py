"""Finite differences that know their own error: extrapolated, with a noise estimate.

For one entry p_i and step h, central differences D(h) = (L(p + h e_i) - L(p - h e_i)) / 2h
satisfy, by Taylor's theorem,

    D(h) = L' + h^2 L'''/6 + h^4 L^(5)/120 + ...

Truncation. The h^2 term is not always small: at batch 2, BatchNorm's normalised
output is xhat = d / sqrt(d^2 + eps) (d: half the difference of a unit's two
pre-activations), which bends on the scale sqrt(d^2 + eps), down to sqrt(eps) ~ 3e-3.
A weight step h moves d by |x| h, so D(h) is off by about (|x| h / sqrt(eps))^2
relative: enough to fail correct code at a tolerance of 1e-6. Richardson's
extrapolation cancels the h^2 term:

    R(h) = (4 D(h) - D(2h)) / 3 = L' - h^4 L^(5)/30 + O(h^6),

so the same bend costs (|x| h / sqrt(eps))^4 instead.

Rounding. A float64 evaluation of L is off by about k u |L| (u = 2^-53; k grows with
the cancellation in the sums that make L), so D(h) is off by k u |L| / h and R(h),
which weighs D(h) by 4/3 and D(2h) by 1/3, by (4/3 + 1/6) k u |L| / h. `fd_noise`
bounds it as FD_ROUNDING * u * max(|L|, 1) / h, FD_ROUNDING = 64 allowing k up to
about 40 (max(|L|, 1): a loss near 0 is still made of terms of order 1).

Its own error, per entry. Where the loss is smooth, R(2h) = (4 D(2h) - D(4h)) / 3
differs from R(h) by 15 h^4 L^(5)/30 (fifteen times R(h)'s truncation error) plus
their rounding, so spread = |R(h) - R(2h)| estimates R(h)'s error from above. Where it is not (a ReLU kink
within 4h of p, or rounding amplified by a BatchNorm unit that is constant over the
batch), the spread is large and says so. The spread depends on the loss alone,
never on the gradient being checked, so it cannot hide a wrong backward pass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import tree_leaves

FD_STEP = 1e-5           # balances truncation (~h^4 after extrapolation) against rounding (~u / h)
FD_ROUNDING = 64         # k of the rounding bound k u max(|L|, 1) / h
UNIT_ROUNDOFF = 2.0 ** -53
FD_BATCH = 64            # entries differentiated at once (memory: FD_BATCH copies of the parameters)


def fd_noise(loss_value, h: float = FD_STEP) -> float:
    """Largest rounding error expected in one extrapolated central difference of
    a loss of this value: FD_ROUNDING * u * max(|L|, 1) / h."""
    return FD_ROUNDING * UNIT_ROUNDOFF * max(abs(float(loss_value)), 1.0) / h


class FiniteDiff(NamedTuple):
    picks: list       # flat indices differentiated, per leaf
    values: list      # R(h) at those indices, per leaf
    spread: list      # |R(h) - R(2h)|, the estimate of R(h)'s own error, per leaf
    loss: float       # f(params, *args)


@functools.partial(jax.jit, static_argnames=("f",))
def _extrapolated_differences(f, params, args, idx, h):
    flat, unravel = ravel_pytree(params)
    at = lambda i, step: f(unravel(flat.at[i].add(step)), *args)
    central = lambda i, step: (at(i, step) - at(i, -step)) / (2 * step)

    def one(i):
        d1, d2, d4 = central(i, h), central(i, 2 * h), central(i, 4 * h)
        r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
        return r1, jnp.abs(r1 - r2)

    return f(params, *args), jax.lax.map(one, idx, batch_size=FD_BATCH)


def finite_diff(f, params, *args, h=FD_STEP, samples=None, rng=None) -> FiniteDiff:
    """R(h) and its spread for scalar f(params, *args), on all or some entries.

    samples=None differentiates every entry; an int that many entries per leaf,
    drawn with the NumPy Generator `rng` (for large layers). f is a static argument
    of a jitted function: pass the same function object (not a fresh lambda) to
    reuse the compilation. Meaningful in float64 only (`jax.enable_x64`).
    """
    sizes = [leaf.size for leaf in tree_leaves(params)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rng = rng or np.random.default_rng(0)
    picks = [np.arange(n) if samples is None or samples >= n else np.sort(rng.choice(n, samples, replace=False))
             for n in sizes]
    idx = np.concatenate([p + o for p, o in zip(picks, offsets[:-1], strict=True)]).astype(np.int64)
    # padded to whole batches: lax.map then compiles one loop body, not a second for the rest
    padded = np.pad(idx, (0, -len(idx) % FD_BATCH))
    value, (values, spread) = _extrapolated_differences(f, params, tuple(args), jnp.asarray(padded),
                                                        jnp.asarray(h, jnp.result_type(float)))
    ends = np.cumsum([len(p) for p in picks])[:-1]
    per_leaf = lambda v: np.split(np.asarray(v)[:len(idx)], ends)
    return FiniteDiff(picks, per_leaf(values), per_leaf(spread), float(value))

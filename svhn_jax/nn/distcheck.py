"""The data-parallel hand backward, proved: sharded hand VJP vs jax.grad vs finite differences.

The function under test is the global-batch loss of `model.loss`, computed on
a mesh whose axis `data` splits the batch of G rows over P devices. Three
gradients of it, in float64:

  manual      `model.loss_and_grads_manual` inside `jax.shard_map`: each device
              runs the hand backward on its G / P rows, BatchNorm is
              synchronised (cross-device psums in forward and backward), and
              the gradient is reduced by hand (`model.allreduce_grads`);
  autodiff    jax.grad of `model.loss` on the whole batch, under jit, with the
              batch sharded and the parameters replicated: the single-device
              definition, partitioned by XLA;
  finite diff central differences of the sharded loss (the manual path's own
              forward, psums included).

Hand vs jax.grad must agree to TOL_AUTODIFF (both are exact; they differ in
summation order only). The sharded forward must also reproduce the global
batch's loss and BatchNorm running statistics.

A missing psum in the gradient reduction leaves a device-varying gradient
where shard_map's out_specs promise a replicated one: with check_vma (the
default) JAX refuses to trace it; with check_vma=False the values disagree.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import coverage, model
from .gradcheck import (FD_STEP, FiniteDiff, _compare, _random_params, _report, float64, model_rates,
                        model_title, path_namer, rel_error, rounding_amplification)

TOL_AUTODIFF = 1e-12  # sharded hand VJP vs jax.grad of the global loss, float64
AXIS = "data"


def _both(flat, state, x, y, key, rates, *, unravel, spec, reg, train, mesh, manual, check_vma):
    """The sharded hand path and the single-device reference at one parameter
    vector: ((loss, grads, new state) by hand, the same by jax.grad). Dropout's
    masks follow each row's global index, so both paths drop the same entries."""
    params = unravel(flat)
    per_device = partial(manual, spec=spec, reg=reg, train=train, axis_name=AXIS)
    hand = jax.shard_map(lambda p, s, x, y, k, r: per_device(p, s, x, y, key=k, **r)[:3], mesh=mesh,
                         in_specs=(P(), P(), P(AXIS), P(AXIS), P(), P()), out_specs=(P(), P(), P()),
                         check_vma=check_vma)
    reference = jax.value_and_grad(lambda p: model.loss(p, state, x, y, spec, reg, train=train, key=key,
                                                        **rates), has_aux=True)
    (loss_ref, (state_ref, _)), g_auto = reference(params)
    return hand(params, state, x, y, key, rates), (loss_ref, g_auto, state_ref)


def _finite_diff(loss, flat, sizes, h, samples, rng) -> FiniteDiff:
    """gradcheck.finite_diff's extrapolated central differences R(h) and their spread
    |R(h) - R(2h)| (see nn/finitediff.py) of loss(flat), on all (or `samples` random)
    entries of each leaf, the leaves being consecutive runs of `sizes` entries of
    flat. Six calls of one compiled program per entry: for the small models checked
    here, cheaper than compiling finite_diff's mapped program around a sharded one."""
    flat = np.asarray(flat)
    picks = [np.arange(n) if samples is None or samples >= n
             else np.sort(rng.choice(n, samples, replace=False)) for n in sizes]

    def central(i, step):
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        return (float(loss(up)) - float(loss(down))) / (2 * step)

    def extrapolated(i):
        d1, d2, d4 = central(i, h), central(i, 2 * h), central(i, 4 * h)
        r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
        return r1, abs(r1 - r2)

    offset, values, spread = 0, [], []
    for n, pick in zip(sizes, picks):
        r = np.array([extrapolated(offset + i) for i in pick]).reshape(-1, 2)
        values.append(r[:, 0])
        spread.append(r[:, 1])
        offset += n
    return FiniteDiff(picks, values, spread, float(loss(flat)))


def check_sharded_model(spec, mesh, *, in_dim=12, batch=16, reg=0.1, train=True, seed=0,
                        fd_samples=None, manual=None, check_vma=True, h=FD_STEP, rates=None):
    """One model on one mesh; a report in gradcheck's format plus the loss and
    BatchNorm running statistics compared with the single-device forward.

    mesh: a jax Mesh with an axis named 'data'; batch must divide by its size.
    manual: a replacement for model.loss_and_grads_manual (same signature,
    with axis_name), to check a deliberately broken one. check_vma=False turns
    off shard_map's static replication check, to see what the numbers say.
    Finite differences are taken of the hand path's own loss (its sharded
    forward, psums included), at `fd_samples` entries per leaf (None: all).
    rates: {layer name: rate} of the layers with one (gradcheck.model_rates).
    """
    n_dev = mesh.shape[AXIS]
    with float64():
        rng = np.random.default_rng(seed)
        params, state = _random_params(rng, spec, in_dim)
        x = jnp.asarray(rng.normal(size=(batch, in_dim)))
        y = jnp.asarray(rng.integers(0, spec[-1][1], batch))
        rates, key = model_rates(spec, rates), jax.random.key(seed)
        amp = float(rounding_amplification(spec, params, state, x, train, key, rates))
        state = jax.device_put(state, NamedSharding(mesh, P()))
        x, y = jax.device_put((x, y), NamedSharding(mesh, P(AXIS)))
        flat, unravel = ravel_pytree(params)
        # One program for both paths: each compilation costs more than the check.
        both = jax.jit(partial(_both, unravel=unravel, spec=spec, reg=reg, train=train, mesh=mesh,
                               manual=manual or model.loss_and_grads_manual, check_vma=check_vma))
        (loss_m, g_manual, state_m), (loss_ref, g_auto, state_ref) = both(flat, state, x, y, key, rates)
        fd = _finite_diff(lambda v: both(v, state, x, y, key, rates)[0][0], flat,
                          [leaf.size for leaf in jax.tree.leaves(params)], h, fd_samples, rng)
        namer = path_namer(tuple(f"{i}.{layer}" for i, (layer, _) in enumerate(spec)))
        rows, failures = _compare(namer, g_manual, g_auto, fd, amp)
        # `not (e <= tol)`: a NaN error fails too
        failures += [f"{r['name']}: sharded hand gradient differs from jax.grad of the global loss "
                     f"(rel error {r['manual_vs_autodiff']:.2e} > {TOL_AUTODIFF:.0e})"
                     for r in rows if not r["manual_vs_autodiff"] <= TOL_AUTODIFF]
        forward = {"loss": rel_error(loss_m, loss_ref),
                   "bn_running_stats": max((rel_error(a, b) for a, b in zip(
                       jax.tree.leaves(state_m), jax.tree.leaves(state_ref))), default=0.0)}
        failures += [f"sharded forward: {k} differs from the single-device one (rel error "
                     f"{e:.2e} > {TOL_AUTODIFF:.0e})" for k, e in forward.items()
                     if not e <= TOL_AUTODIFF]

    shown = "".join(f" {n}={float(r):g}" for n, r in rates.items())
    title = (f"sharded model {model_title(spec, in_dim)}{shown} ({'train' if train else 'eval'}), "
             f"{n_dev} devices x {batch // n_dev} rows, L2={reg}")
    return dict(_report(title, rows, failures), devices=n_dev, forward_rel_error=forward)


def check_sharded_all(mesh, hidden=(16,), *, placements=model.BATCHNORM_PLACEMENTS, modes=coverage.MODES,
                      activations=None, rates=None, batch=16, in_dim=12, reg=0.1, seed=0, fd_samples=None):
    """check_sharded_model for each model of coverage.specs (activation, BatchNorm
    placement, mode; rates: {layer name: rate} of the layers with one)."""
    return [check_sharded_model(spec, mesh, in_dim=in_dim, batch=batch, reg=reg, train=train, seed=seed,
                                fd_samples=fd_samples, rates=rates)
            for spec, train in coverage.specs(hidden, placements, modes, activations, rates)]

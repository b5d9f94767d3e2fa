"""K models trained on a placement: one compiled scan over a segment of an epoch.

    loss_and_grads   model.GRAD_MODES[mode] for a global batch split along `data`
    get_batch        train.get_batch laid out along `data`
    run_segment      steps start .. start+count-1 of K models on a mesh.Placement:
                     the one compiled program every run trains with
    run_steps        run_segment for one unstacked model on a data mesh

The gradient modes over a global batch split along `data`:
  autodiff: jax.grad of the global-batch loss under jit; XLA partitions the
            program from the shardings of its inputs and inserts the reductions.
  manual:   each device runs the hand backward on its rows inside
            `jax.shard_map`; BatchNorm is synchronised and the gradient
            reduction is a hand-written `lax.psum` (model.allreduce_grads).

Stacked models (an ensemble, a sweep group) are one step jax.vmap-ed over their
leading axis with `spmd_axis_name=models`: the mapped axis is partitioned along
the mesh's `models` axis, and inside each model's step the batch is split along
`data` as for a single model (shard_map's specs gain the models axis). One model
(a single run, the range test) is not vmapped at all: its program is exactly the
single-device one, on one device bit for bit.

Every step reads its batch through `train.get_batch` with the global batch order
of `train.epoch_order`, so data order, augmentation and PRNG depend on the seed
and step only, never on the mesh: 1, 2 or 4 devices train the same model up to
the order of float32 summation. The batch is gathered from the row-sharded set
by XLA (rows of other devices arrive through a collective; the set itself never
moves) and then laid out along `data`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import mesh as meshes
from . import train
from ..nn import model
from .mesh import DATA, MODELS, Placement


def loss_and_grads(grad_mode: str, mesh):
    """A function with the signature of model.GRAD_MODES[grad_mode] that takes a
    global batch x (B, D), y (B,) split along `data` and replicated params and
    state, and returns the global batch's (loss, grads, new state, logits)."""
    if grad_mode == "autodiff":
        return model.loss_and_grads_autodiff

    def manual(params, state, x, y, spec, reg=0.0, *, train: bool = True):
        per_device = partial(model.loss_and_grads_manual, spec=spec, train=train, axis_name=DATA)
        return jax.shard_map(lambda p, s, x, y, reg: per_device(p, s, x, y, reg=reg), mesh=mesh,
                             in_specs=(P(), P(), P(DATA), P(DATA), P()),
                             out_specs=(P(), P(), P(), P(DATA)))(params, state, x, y, reg)

    return manual


def get_batch(X, y, order, i, key, step, cfg: train.StepConfig, mesh):
    """train.get_batch, laid out along `data`: each device gets its rows of the batch."""
    batch = train.get_batch(X, y, order, i, key, step, cfg)
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P(DATA)))


def _model_step(X, y, cfg: train.StepConfig, place: Placement):
    """One model's step i: (state, hp, order, i) -> (state, outputs)."""
    split = place.data > 1
    grads_fn = loss_and_grads(cfg.grad_mode, place.mesh) if split else None

    def step(state, hp, order, i):
        if split:
            xb, yb = get_batch(X, y, order, i, state.key, state.step, cfg, place.mesh)
        else:
            xb, yb = train.get_batch(X, y, order, i, state.key, state.step, cfg)
        if cfg.check_every:   # on a mesh the check differentiates the global-batch loss
            return train.checked_step(state, hp, xb, yb, i, cfg, loss_and_grads=grads_fn)
        return train.train_step(state, hp, xb, yb, cfg, loss_and_grads=grads_fn)

    return step, grads_fn


def segment(states, hps, X, y, orders, start, cfg: train.StepConfig, count: int, place: Placement):
    """Steps start .. start+count-1 of an epoch for the models of `place`.

    Stacked: states and hps have a leading axis of place.padded models; orders is
    (padded, L) (one batch order each) or (L,) (shared: same seed). A shared order
    without augmentation gives every model the same batch, and vmap then turns the
    K products x @ W_k into one wider x @ [W_1 ... W_K]. Not stacked: one state,
    hp and order (L,).

    Returns the new states and the per-step outputs of train.steps, with a leading
    model axis when stacked: (cross-entropy, correct) (K', count), then with
    cfg.check_every a stepcheck.StepCheck of (K', count) arrays, then with
    cfg.keep_grads the gradient of train.final_grads (stacked likewise). With several
    processes every output but the states is replicated, so every process can read it.
    """
    step, grads_fn = _model_step(X, y, cfg, place)
    if place.stacked:
        axes = (0, 0, 0 if orders.ndim == 2 else None)
        spmd = MODELS if place.mesh is not None else None
        body = lambda s, i: jax.vmap(lambda st, h, o: step(st, h, o, i), in_axes=axes,
                                     spmd_axis_name=spmd)(s, hps, orders)
    else:
        body = lambda s, i: step(s, hps, orders, i)
    states, outs = jax.lax.scan(body, states, start + jnp.arange(count))
    last = start + count - 1
    if place.stacked:
        outs = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), outs)
        if cfg.keep_grads:
            grads = lambda s, h, o: train.final_grads(s, h, X, y, o, last, cfg, grads_fn)
            outs = outs + jax.vmap(grads, in_axes=axes, spmd_axis_name=spmd)(states, hps, orders)
    else:
        outs = outs + train.final_grads(states, hps, X, y, orders, last, cfg, grads_fn)
    if place.mesh is not None and jax.process_count() > 1:   # readable in every process
        outs = jax.lax.with_sharding_constraint(outs, NamedSharding(place.mesh, P()))
    return states, outs


# One compiled program per (cfg, count, placement). The states' buffers are donated:
# the caller must use the returned states.
run_segment = jax.jit(segment, static_argnames=("cfg", "count", "place"), donate_argnums=(0,))


def run_steps(state, hp, X, y, order, start, cfg: train.StepConfig, count: int, place: Placement):
    """train.run_steps for one model on the data mesh of `place` (X, y from
    mesh.shard_rows); state, hp and order are replicated here if they are not
    already. The state is donated: use the returned one."""
    meshes.check_batch(cfg.batch, place)
    state, hp, order = meshes.replicate((state, hp, order), place)
    return run_segment(state, hp, X, y, order, start, cfg, count, place)

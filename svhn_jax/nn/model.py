"""An MLP built from `layers`, with a hand-chained backward and an autodiff twin.

A model is described by a *spec*: a tuple of (layer name, width) pairs, e.g.
the mission's default 3072 -> 128 -> 10

    (("dense", 128), ("relu", 128), ("dense", 10))

Parameters and BatchNorm running statistics are tuples with one dict per
layer (empty for ReLU), so `params[0]["W"]` is the first weight matrix.
The spec is static (hashable), so jitted functions take it as a static
argument or close over it.

Two gradient modes give the same numbers:
  manual:   `loss_and_grads_manual` runs forward, then chains the layers'
            hand-written backward passes in reverse order;
  autodiff: `loss_and_grads_autodiff` applies jax.value_and_grad to `loss`,
            the same forward written with plain jnp operations.

Data parallel: called inside `jax.shard_map` with `axis_name`, the mesh axis
the global batch of G rows is split along (P devices, N = G / P rows each),
each function takes its device's rows and computes the global batch's
quantities: BatchNorm is synchronised (see layers.batchnorm_forward), the loss
is the global mean, and `loss_and_grads_manual` reduces the gradient by hand
(`allreduce_grads`). axis_name=None is the single-device model.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import layers, losses
from ..errors import SvhnJaxError

BATCHNORM_PLACEMENTS = ("none", "before", "after")


def make_spec(hidden: Sequence[int] = (128,), num_classes: int = 10,
              batchnorm: str = "none") -> tuple:
    """Spec of Dense-[BatchNorm]-ReLU blocks followed by Dense(num_classes).

    batchnorm: "none"; "before" the ReLU (Dense-BN-ReLU, the usual choice);
    or "after" it (Dense-ReLU-BN, the seed notebook's placement).
    hidden may be empty (a softmax-regression model) or of any depth.
    """
    hidden = tuple(hidden)
    for h in hidden:
        if not isinstance(h, (int, np.integer)) or h < 1:
            raise SvhnJaxError(f"hidden sizes must be positive integers, got {list(hidden)}; "
                             f"e.g. --hidden 128 or --hidden 512,256")
    if batchnorm not in BATCHNORM_PLACEMENTS:
        raise SvhnJaxError(f"batchnorm must be one of {BATCHNORM_PLACEMENTS}, got {batchnorm!r}")
    if num_classes < 2:
        raise SvhnJaxError(f"num_classes must be at least 2, got {num_classes}")
    spec = []
    for h in hidden:
        block = [("dense", h), ("relu", h)]
        if batchnorm == "before":
            block.insert(1, ("batchnorm", h))
        elif batchnorm == "after":
            block.append(("batchnorm", h))
        spec += block
    spec.append(("dense", num_classes))
    return tuple(spec)


def init(key, spec, in_dim: int, dtype=jnp.float32):
    """Random parameters and initial BatchNorm state: two tuples of dicts.

    A Dense layer followed directly by BatchNorm gets no bias (see dense_init).
    """
    params, state, dim = [], [], in_dim
    for i, (k, (name, width)) in enumerate(zip(jax.random.split(key, len(spec)), spec)):
        init_fn = layers.LAYERS[name].init
        if name == "dense":
            # A bias right before BatchNorm is cancelled by its mean subtraction.
            bias = i + 1 == len(spec) or spec[i + 1][0] != "batchnorm"
            p, s, dim = init_fn(k, dim, width, dtype, bias=bias)
        else:
            p, s, dim = init_fn(k, dim, dtype)
        params.append(p)
        state.append(s)
    return tuple(params), tuple(state)


def _check_batch(params, spec, x, y=None):
    """Clear errors for inputs that would otherwise fail deep inside JAX.

    Shape and dtype checks work on tracers too, so they cost nothing under
    jit; the label range is checked only on concrete arrays.
    """
    in_dim, num_classes = params[0]["W"].shape[0], spec[-1][1]
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise SvhnJaxError(f"x must be a floating-point array, got dtype {jnp.result_type(x)}; "
                         f"convert images with svhn_jax.preprocess first")
    if jnp.ndim(x) != 2 or x.shape[1] != in_dim:
        raise SvhnJaxError(f"x must have shape (N, {in_dim}) for this model, got {jnp.shape(x)}")
    if y is None:
        return
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise SvhnJaxError(f"labels must be integers in [0, {num_classes}), got dtype "
                         f"{jnp.result_type(y)}")
    if jnp.shape(y) != (x.shape[0],):
        raise SvhnJaxError(f"labels must have shape ({x.shape[0]},) to match x {x.shape}, "
                         f"got {jnp.shape(y)}")
    if not isinstance(y, jax.core.Tracer):
        y_np = np.asarray(y)
        if y_np.size and (y_np.min() < 0 or y_np.max() >= num_classes):
            raise SvhnJaxError(f"labels must lie in [0, {num_classes}), got values from "
                             f"{y_np.min()} to {y_np.max()}")


def forward(params, state, x, spec, *, train: bool, axis_name=None):
    """x (N, D) -> logits (N, K), new state, caches (one per layer)."""
    _check_batch(params, spec, x)
    caches, new_state = [], []
    for (name, _), p, s in zip(spec, params, state):
        x, s, cache = layers.LAYERS[name].forward(p, s, x, train, axis_name=axis_name)
        caches.append(cache)
        new_state.append(s)
    return x, tuple(new_state), caches


def backward(params, caches, dlogits, spec):
    """Chain the layers' VJPs from dL/dlogits (N, K) back to dL/dparams."""
    grads, dx = [], dlogits
    for (name, _), p, cache in reversed(list(zip(spec, params, caches))):
        g, dx = layers.LAYERS[name].backward(p, cache, dx)
        grads.append(g)
    return tuple(reversed(grads))


def _global_mean(local_mean, axis_name):
    """The global batch's mean from each device's mean over its equal share."""
    if axis_name is None:
        return local_mean
    return jax.lax.psum(local_mean, axis_name) / jax.lax.axis_size(axis_name)


def allreduce_grads(grads, axis_name):
    """The hand-written gradient reduction: a device's backward gives the
    gradient of the global loss through its own rows only; the loss sums over
    all rows, so the full gradient is the sum over devices (the 1/G of the
    mean is already in each device's dlogits, see loss_and_grads_manual)."""
    return grads if axis_name is None else jax.lax.psum(grads, axis_name)


def loss(params, state, x, y, spec, reg=0.0, *, smoothing=None, train: bool = True, axis_name=None):
    """Mean softmax cross-entropy (label smoothing `smoothing`, see
    losses.softmax_cross_entropy) + 0.5 * reg * sum ||W||^2 -> (loss, (new_state, logits)).

    Written with plain jnp operations so that jax.grad differentiates it: this
    is the autodiff reference for the hand-written backward. With axis_name
    (inside shard_map) it is the mean over the global batch; logits are local.
    """
    _check_batch(params, spec, x, y)
    logits, new_state, _ = forward(params, state, x, spec, train=train, axis_name=axis_name)
    data_loss, _ = losses.softmax_cross_entropy(logits, y, smoothing)
    return _global_mean(data_loss, axis_name) + losses.l2_penalty(params, reg), (new_state, logits)


def loss_and_grads_manual(params, state, x, y, spec, reg=0.0, *, smoothing=None, train: bool = True,
                          axis_name=None):
    """(loss, grads, new_state, logits) with grads from the hand-written VJPs.

    With axis_name, the global loss is (1/P) sum_devices (local mean), so a
    device's dL/dlogits is softmax_cross_entropy_backward's (p - onehot) / N
    times 1/P, i.e. (p - onehot) / G; the backward then yields each device's
    share of every gradient, and `allreduce_grads` sums the shares. The L2
    term is added after the sum: its gradient is the same on every device.
    """
    _check_batch(params, spec, x, y)
    logits, new_state, caches = forward(params, state, x, spec, train=train, axis_name=axis_name)
    data_loss, loss_cache = losses.softmax_cross_entropy(logits, y, smoothing)
    dlogits = losses.softmax_cross_entropy_backward(loss_cache)
    if axis_name is not None:
        dlogits = dlogits / jax.lax.axis_size(axis_name)
    grads = allreduce_grads(backward(params, caches, dlogits, spec), axis_name)
    grads = jax.tree.map(jnp.add, grads, losses.l2_penalty_grad(params, reg))
    value = _global_mean(data_loss, axis_name) + losses.l2_penalty(params, reg)
    return value, grads, new_state, logits


def loss_and_grads_autodiff(params, state, x, y, spec, reg=0.0, *, smoothing=None, train: bool = True,
                            axis_name=None):
    """(loss, grads, new_state, logits) with grads from jax.grad of `loss`.

    Inside shard_map (axis_name given) jax.grad itself inserts the psum of the
    replicated parameters' gradients."""
    (value, (new_state, logits)), grads = jax.value_and_grad(loss, has_aux=True)(
        params, state, x, y, spec, reg, smoothing=smoothing, train=train, axis_name=axis_name)
    return value, grads, new_state, logits


GRAD_MODES = {"manual": loss_and_grads_manual, "autodiff": loss_and_grads_autodiff}


def predict(params, state, x, spec):
    """Class labels (N,) int32 for x (N, D), BatchNorm in eval mode."""
    logits, _, _ = forward(params, state, x, spec, train=False)
    return jnp.argmax(logits, axis=1).astype(jnp.int32)

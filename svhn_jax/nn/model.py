"""An MLP built from `layers`, with a hand-chained backward and an autodiff twin.

A model is described by a *spec*: a tuple of (layer name, width) pairs, the
names those of the registry layers.LAYERS, e.g. the mission's 3072 -> 128 -> 10

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
              batchnorm: str = "none", activation: str | None = None, rates: Sequence[str] = ()) -> tuple:
    """Spec of Dense-[BatchNorm]-activation-[noise] blocks followed by Dense(num_classes),
    every layer named by its role in the registry (layers.LAYERS).

    batchnorm: "none"; "before" the activation (Dense-BN-ReLU, the usual choice);
    or "after" it (Dense-ReLU-BN, the seed notebook's placement).
    activation: a layer of role ACTIVATION (None: the registry's first, ReLU).
    rates: the layers with a rate (dropout) that the network has: an INPUT_NOISE
    layer comes first, a HIDDEN_NOISE layer ends every hidden block.
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
    activation = layers.activations()[0] if activation is None else activation
    if activation not in layers.activations():
        raise SvhnJaxError(f"unknown activation {activation!r}; choose one of "
                           f"{', '.join(layers.activations())}")
    with_rate = layers.with_rate()
    if set(rates) - set(with_rate):
        raise SvhnJaxError(f"no layer with a rate named {sorted(set(rates) - set(with_rate))}; the "
                           f"layers with one: {', '.join(with_rate)}")
    noise = lambda role: [n for n in layers.of_role(role) if n in rates]
    linear, norm = layers.single(layers.LINEAR), layers.single(layers.NORM)
    spec = [(n, None) for n in noise(layers.INPUT_NOISE)]
    for h in hidden:
        block = [(linear, h), (activation, h)]
        if batchnorm == "before":
            block.insert(1, (norm, h))
        elif batchnorm == "after":
            block.append((norm, h))
        spec += block + [(n, h) for n in noise(layers.HIDDEN_NOISE)]
    spec.append((linear, num_classes))
    return tuple(spec)


def init(key, spec, in_dim: int, dtype=jnp.float32):
    """Random parameters and initial BatchNorm state: two tuples of dicts.

    A Dense layer followed directly by BatchNorm gets no bias (see dense_init).
    """
    params, state, dim = [], [], in_dim
    for i, (k, (name, width)) in enumerate(zip(jax.random.split(key, len(spec)), spec)):
        # A bias right before BatchNorm is cancelled by its mean subtraction.
        bias = i + 1 == len(spec) or layers.LAYERS[spec[i + 1][0]].role != layers.NORM
        p, s, dim = layers.LAYERS[name].init(k, dim, width, dtype, bias)
        params.append(p)
        state.append(s)
    return tuple(params), tuple(state)


def first_linear(spec) -> int | None:
    """The index of the first linear layer of a spec (None: it has none)."""
    roles = [layers.LAYERS[name].role for name, _ in spec]
    return roles.index(layers.LINEAR) if layers.LINEAR in roles else None


def _check_batch(params, spec, x, y=None):
    """Clear errors for inputs that would otherwise fail deep inside JAX.

    Shape and dtype checks work on tracers too, so they cost nothing under
    jit; the label range is checked only on concrete arrays.
    """
    in_dim, num_classes = params[first_linear(spec)]["W"].shape[0], spec[-1][1]
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


def forward(params, state, x, spec, *, train: bool, axis_name=None, key=None, rates=None):
    """x (N, D) -> logits (N, K), new state, caches (one per layer).

    key: the PRNG key of the step's randomness (dropout), None for a network
    without it; layer i draws from fold_in(key, i). rates: {layer name: rate}
    for the layers with a rate (dropout), each needed in train mode; in eval
    mode such a layer is the identity."""
    _check_batch(params, spec, x)
    rates = _check_rates(spec, rates or {}, key, train)
    caches, new_state = [], []
    for i, ((name, _), p, s) in enumerate(zip(spec, params, state)):
        x, s, cache = apply_layer(i, name, p, s, x, train=train, key=key, rates=rates, axis_name=axis_name)
        caches.append(cache)
        new_state.append(s)
    return x, tuple(new_state), caches


def apply_layer(i: int, name: str, p, s, x, *, train: bool, key=None, rates=None, axis_name=None):
    """Layer i of a spec, named `name`, on x: its forward's (y, new state, cache),
    with the key fold_in(key, i) and its rate where it has one."""
    layer, rate = layers.LAYERS[name], (rates or {}).get(name)
    layer_key = jax.random.fold_in(key, i) if layer.rate and rate is not None and key is not None else None
    return layer.forward(p, s, x, train=train, key=layer_key, rate=rate, axis_name=axis_name)


def _check_rates(spec, rates: dict, key, train: bool) -> dict:
    """rates, after clear errors for a rate no layer of the spec reads (a setting that
    cannot take effect) and, in train mode, for a layer with a rate but none given
    or no key to draw from."""
    names = {name for name, _ in spec}
    unused = sorted(k for k, v in rates.items() if v is not None and k not in names)
    if unused:
        raise SvhnJaxError(f"a rate for {', '.join(unused)}, which this network does not have "
                           f"(its layers: {', '.join(sorted(names))})")
    drawn = sorted(n for n in names if layers.LAYERS[n].rate)
    if train and drawn and (key is None or any(rates.get(n) is None for n in drawn)):
        raise SvhnJaxError(f"the network's {', '.join(drawn)} train with a rate each and a PRNG key: "
                           f"pass key= and {', '.join(f'{n}=' for n in drawn)}")
    return rates


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


def loss(params, state, x, y, spec, reg=0.0, *, smoothing=None, train: bool = True, axis_name=None,
         key=None, **rates):
    """Mean softmax cross-entropy (label smoothing `smoothing`, see
    losses.softmax_cross_entropy) + 0.5 * reg * sum ||W||^2 -> (loss, (new_state, logits)).

    Written with plain jnp operations so that jax.grad differentiates it: this
    is the autodiff reference for the hand-written backward. With axis_name
    (inside shard_map) it is the mean over the global batch; logits are local.
    key, rates: the randomness of the layers that have it (`forward`); rates are
    keywords named after their layers (dropout=, input_dropout=).
    """
    _check_batch(params, spec, x, y)
    logits, new_state, _ = forward(params, state, x, spec, train=train, axis_name=axis_name, key=key,
                                   rates=rates)
    data_loss, _ = losses.softmax_cross_entropy(logits, y, smoothing)
    return _global_mean(data_loss, axis_name) + losses.l2_penalty(params, reg), (new_state, logits)


def loss_and_grads_manual(params, state, x, y, spec, reg=0.0, *, smoothing=None, train: bool = True,
                          axis_name=None, key=None, **rates):
    """(loss, grads, new_state, logits) with grads from the hand-written VJPs.

    With axis_name, the global loss is (1/P) sum_devices (local mean), so a
    device's dL/dlogits is softmax_cross_entropy_backward's (p - onehot) / N
    times 1/P, i.e. (p - onehot) / G; the backward then yields each device's
    share of every gradient, and `allreduce_grads` sums the shares. The L2
    term is added after the sum: its gradient is the same on every device.
    """
    _check_batch(params, spec, x, y)
    logits, new_state, caches = forward(params, state, x, spec, train=train, axis_name=axis_name, key=key,
                                        rates=rates)
    data_loss, loss_cache = losses.softmax_cross_entropy(logits, y, smoothing)
    dlogits = losses.softmax_cross_entropy_backward(loss_cache)
    if axis_name is not None:
        dlogits = dlogits / jax.lax.axis_size(axis_name)
    grads = allreduce_grads(backward(params, caches, dlogits, spec), axis_name)
    grads = jax.tree.map(jnp.add, grads, losses.l2_penalty_grad(params, reg))
    value = _global_mean(data_loss, axis_name) + losses.l2_penalty(params, reg)
    return value, grads, new_state, logits


def loss_and_grads_autodiff(params, state, x, y, spec, reg=0.0, *, smoothing=None, train: bool = True,
                            axis_name=None, key=None, **rates):
    """(loss, grads, new_state, logits) with grads from jax.grad of `loss`.

    Inside shard_map (axis_name given) jax.grad itself inserts the psum of the
    replicated parameters' gradients."""
    (value, (new_state, logits)), grads = jax.value_and_grad(loss, has_aux=True)(
        params, state, x, y, spec, reg, smoothing=smoothing, train=train, axis_name=axis_name, key=key,
        **rates)
    return value, grads, new_state, logits


GRAD_MODES = {"manual": loss_and_grads_manual, "autodiff": loss_and_grads_autodiff}


def predict(params, state, x, spec):
    """Class labels (N,) int32 for x (N, D), BatchNorm in eval mode."""
    logits, _, _ = forward(params, state, x, spec, train=False)
    return jnp.argmax(logits, axis=1).astype(jnp.int32)

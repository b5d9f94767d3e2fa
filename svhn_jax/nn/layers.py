"""Layers as pure functions, each with a backward pass derived by hand, and the
registry `LAYERS`: one `Layer` record per layer, the one place a layer is named.

Every layer has the same three functions:

    init(key, in_dim, ...)          -> params, state, out_dim
    forward(params, state, x, ...)  -> y, new_state, cache
    backward(params, cache, dy)     -> dparams, dx

`params` and `state` are dicts of arrays (empty for ReLU). `cache` holds what
the backward pass needs from the forward pass (the "residuals"). `backward` is
the vector-Jacobian product: given dy = dL/dy (same shape as y) it returns
dL/dparams (same tree as params) and dx = dL/dx. Nothing here calls jax.grad;
`svhn_jax.gradcheck` proves each backward against jax.grad and finite
differences.

Shapes: x is (N, D) for a batch of N rows of D features; Dense maps D -> M.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..errors import SvhnJaxError

# --------------------------------------------------------------------- Dense


def dense_init(key, in_dim: int, out_dim: int, dtype=jnp.float32, *, bias: bool = True):
    """He-normal weights W (D, M) with std sqrt(2/D), zero bias b (M,).

    He initialisation keeps the variance of activations roughly constant
    through ReLU layers, which halve it. bias=False leaves out b: a Dense
    followed by BatchNorm in train mode gets exactly zero gradient for b,
    because BatchNorm subtracts the batch mean (and beta takes b's role).
    """
    W = jax.random.normal(key, (in_dim, out_dim), dtype) * jnp.sqrt(2.0 / in_dim).astype(dtype)
    params = {"W": W, "b": jnp.zeros((out_dim,), dtype)} if bias else {"W": W}
    return params, {}, out_dim


def dense_forward(params, state, x):
    """y = x W + b.  x (N, D), W (D, M), b (M,) if present -> y (N, M); cache = x."""
    y = x @ params["W"]
    return (y + params["b"] if "b" in params else y), state, x


def dense_backward(params, cache, dy):
    """For y = x W + b and upstream dy (N, M):

        dW = x^T dy        (D, M)
        db = sum_n dy[n]   (M,)
        dx = dy W^T        (N, D)

    Under jit, dx of the first layer is never used and XLA drops it.
    """
    x = cache
    # Speed, not maths: XLA:CPU runs x^T dy (a contraction over the batch axis,
    # dimension 0 of both operands) about twice as slowly as a plain (D, N) @ (N, M)
    # product, and folds an ordinary transpose back into the dot. The barrier
    # makes it materialise x^T first (a copy of N * D floats), which pays off.
    dW = jax.lax.optimization_barrier(x.T) @ dy
    grads = {"W": dW, "b": dy.sum(axis=0)} if "b" in params else {"W": dW}
    return grads, dy @ params["W"].T


# ---------------------------------------------------------------------- ReLU


def relu_init(key, in_dim: int, dtype=jnp.float32):
    """ReLU has no parameters and keeps the width."""
    del key, dtype
    return {}, {}, in_dim


def relu_forward(params, state, x):
    """y = max(x, 0), elementwise; cache = the mask x > 0 (N, D)."""
    del params
    mask = x > 0
    return jnp.where(mask, x, 0), state, mask


def relu_backward(params, cache, dy):
    """dx = dy * 1[x > 0]. The derivative at exactly 0 is taken as 0."""
    del params
    return {}, jnp.where(cache, dy, 0)


# ---------------------------------------------------------------- LeakyReLU

LEAKY_SLOPE = 0.01


def leaky_relu_forward(params, state, x):
    """y = x where x > 0, else LEAKY_SLOPE * x, elementwise; cache = the mask x > 0 (N, D)."""
    del params
    mask = x > 0
    return jnp.where(mask, x, LEAKY_SLOPE * x), state, mask


def leaky_relu_backward(params, cache, dy):
    """dx = dy where x > 0, else LEAKY_SLOPE * dy (the slope at exactly 0 taken as LEAKY_SLOPE)."""
    del params
    return {}, jnp.where(cache, dy, LEAKY_SLOPE * dy)


# ---------------------------------------------------------------------- tanh


def tanh_forward(params, state, x):
    """y = tanh(x), elementwise; cache = y (N, D)."""
    del params
    y = jnp.tanh(x)
    return y, state, y


def tanh_backward(params, cache, dy):
    """dx = dy * (1 - y^2): tanh' = 1 - tanh^2, from the forward's output."""
    del params
    return {}, dy * (1 - cache * cache)


# ----------------------------------------------------------------- BatchNorm

BN_EPS = 1e-5
BN_MOMENTUM = 0.9


def batchnorm_init(key, in_dim: int, dtype=jnp.float32):
    """gamma = 1, beta = 0 (D,); running mean 0 and variance 1 (D,) as state."""
    del key
    params = {"gamma": jnp.ones((in_dim,), dtype), "beta": jnp.zeros((in_dim,), dtype)}
    state = {"mean": jnp.zeros((in_dim,), dtype), "var": jnp.ones((in_dim,), dtype)}
    return params, state, in_dim


def _batch_mean(v, axis_name):
    """Mean over the rows of v (N, D) -> (D,); with an axis name, over the rows
    of every device along that mesh axis (equal shards), from psum-ed sums."""
    if axis_name is None:
        return v.mean(axis=0)
    return jax.lax.psum(v.sum(axis=0), axis_name) / (v.shape[0] * jax.lax.axis_size(axis_name))


def batchnorm_forward(params, state, x, *, train: bool, momentum: float = BN_MOMENTUM,
                      eps: float = BN_EPS, axis_name=None):
    """Batch normalisation over the feature axis of x (N, D).

    train=True:  mu, var = mean and biased variance of the batch (D,);
                 xhat = (x - mu) / sqrt(var + eps);  y = gamma * xhat + beta;
                 running <- momentum * running + (1 - momentum) * batch statistic
                 (the CS231n convention; PyTorch's momentum=0.1 is our 0.9,
                 and PyTorch keeps the unbiased variance, we keep the biased one).
    train=False: the same with the running mean and variance, state unchanged.

    axis_name: inside `jax.shard_map`, the mesh axis the batch is split along.
    Each device then holds N of the G = N * axis_size rows of the global batch,
    and mu and var are the global batch's, from `lax.psum`-ed sums (synchronised
    BatchNorm): outputs and running statistics equal those of one device given
    the whole batch. None (the default) is the single-device layer.

    The batch statistics are not a gradient path in eval mode, so the two
    modes have different backward passes; the cache records which (and the
    axis the statistics were reduced over).
    """
    if train:
        rows = x.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
        if rows < 2:
            raise SvhnJaxError(
                f"BatchNorm in train mode needs a batch of at least 2 rows to estimate a "
                f"variance, got {rows} (x of shape {x.shape} per device). Use a larger batch "
                f"or eval mode.")
        mu = _batch_mean(x, axis_name)
        var = _batch_mean((x - mu) ** 2, axis_name)
        new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mu,
                     "var": momentum * state["var"] + (1 - momentum) * var}
    else:
        mu, var, new_state = state["mean"], state["var"], state
    inv_std = jax.lax.rsqrt(var + eps)
    xhat = (x - mu) * inv_std
    y = params["gamma"] * xhat + params["beta"]
    return y, new_state, {"xhat": xhat, "inv_std": inv_std, "train": train, "axis_name": axis_name}


def batchnorm_backward(params, cache, dy):
    """VJP of batchnorm_forward for upstream dy (N, D).

        dbeta  = sum_n dy
        dgamma = sum_n dy * xhat
        dxhat  = dy * gamma

    Eval mode: mu and var are constants, so dx = dxhat * inv_std.
    Train mode: mu and var depend on every row of x. Pushing dxhat back
    through xhat = (x - mu) * inv_std, mu = mean(x), var = mean((x - mu)^2)
    and collecting terms gives the compact form

        dx = inv_std / N * (N * dxhat - sum_n dxhat - xhat * sum_n (dxhat * xhat))

    i.e. dxhat with its mean and its projection on xhat removed: BatchNorm's
    output cannot change under a shift or a scaling of x.

    Synchronised (the forward had an axis_name; each of P devices holds N of
    the G = P * N rows): mu and var are means over all G rows, so the
    derivation above runs over the global batch. Row i of device d gets

        dxhat_i = sum_j dL/dy_j dy_j/dxhat_i = dy_i * gamma  (y_j depends on xhat_j only)
        dL/dvar = sum_{j in G} dxhat_j * (x_j - mu) * (-1/2) (var + eps)^(-3/2)
                = -(inv_std^2 / 2) * sum_G dxhat * xhat
        dL/dmu  = -inv_std * sum_G dxhat   (the dvar/dmu term is sum_G -2 (x_j - mu) / G = 0)
        dx_i    = dxhat_i * inv_std + dL/dvar * 2 (x_i - mu) / G + dL/dmu / G
                = inv_std * (dxhat_i - (1/G) sum_G dxhat - xhat_i (1/G) sum_G dxhat * xhat)

    The two sums over G are the cross-device terms: each is the psum over
    devices of the local sum over N rows. dgamma and dbeta stay local sums
    here: like every parameter gradient, the model reduces them over devices.
    """
    xhat, inv_std = cache["xhat"], cache["inv_std"]
    grads = {"gamma": (dy * xhat).sum(axis=0), "beta": dy.sum(axis=0)}
    dxhat = dy * params["gamma"]
    if not cache["train"]:
        return grads, dxhat * inv_std
    axis_name = cache.get("axis_name")  # absent: a cache built by hand, single device
    dx = inv_std * (dxhat - _batch_mean(dxhat, axis_name)
                    - xhat * _batch_mean(dxhat * xhat, axis_name))
    return grads, dx


# ------------------------------------------------------------------- Dropout


def dropout_keep(key, rate, shape, axis_name=None):
    """Which entries of x (N, D) inverted dropout keeps: (N, D) bool.

    Row r of the global batch keeps entry j where u_rj >= rate, u_rj uniform on
    [0, 1) in steps of 2^-24 from the 32 random bits of fold_in(key, r) (the
    top 24 of them, exact in float32). A row's mask depends on its global index
    r alone: with axis_name (inside shard_map, each of P devices holding N rows)
    device d's rows are d N .. d N + N - 1, so 1 or P devices drop the same
    entries. Compared in float32 whatever the dtype, so a float64 check of a
    float32 run sees the run's mask.
    """
    n, d = shape
    first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    bits = jax.vmap(lambda r: jax.random.bits(jax.random.fold_in(key, r), (d,), jnp.uint32))(
        first + jnp.arange(n))
    u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24)
    return u >= jnp.asarray(rate, jnp.float32)


def dropout_forward(params, state, x, *, train: bool, key, rate, axis_name=None):
    """Inverted dropout: y = x * m / (1 - rate), m = dropout_keep(key, rate, ...),
    so that E[y] = x; cache = the multiplier m / (1 - rate) (N, D). In eval mode
    (train=False), or without a rate (None: not in the program), y = x and the
    cache is None. rate is traced: a sweep trains several rates at once."""
    del params
    if not train or rate is None:
        return x, state, None
    keep = dropout_keep(key, rate, x.shape, axis_name)
    scale = jnp.where(keep, 1 / (1 - jnp.asarray(rate, x.dtype)), 0).astype(x.dtype)
    return x * scale, state, scale


def dropout_backward(params, cache, dy):
    """y = x * s elementwise with s fixed by the key: dx = dy * s (dy where the
    forward was the identity)."""
    del params
    return {}, dy if cache is None else dy * cache


# ------------------------------------------------------------------ registry

# What a layer does in a network: model.make_spec places layers by role.
LINEAR, NORM, ACTIVATION, INPUT_NOISE, HIDDEN_NOISE = (
    "linear", "normalisation", "activation", "input noise", "hidden noise")


class Layer(NamedTuple):
    """One layer: its three functions, called the same way for every layer, and what
    the model and the checks need to know about it.

    init(key, in_dim, width, dtype, bias) -> params, state, out_dim
    forward(params, state, x, *, train, key, rate, axis_name) -> y, new_state, cache
        train: training or evaluation mode; key: a PRNG key for a layer with
        randomness (None otherwise); rate: the value of the hyperparameter named
        after the layer, for a layer with `rate` (None: not in the program);
        axis_name: the mesh axis the batch is split along (None on one device).
    backward(params, cache, dy) -> dparams, dx

    role: one of the roles above. kinks: None for a layer smooth in its input;
    else a function of its input x (N, D) whose value is the same at two inputs
    only if the layer is smooth on the segment between them (ReLU: x > 0), for
    the per-step check's finite difference. rate: the forward reads a rate and
    a key (dropout): the model passes the hyperparameter of the layer's own
    name. variants: the checks' (label, options) of gradcheck.check_layer that
    take different paths through the code (options: bias, train).
    """

    init: Callable
    forward: Callable
    backward: Callable
    role: str
    kinks: Callable | None = None
    rate: bool = False
    variants: tuple = (("", {}),)


def _plain(forward):
    """forward(params, state, x) as a registry forward (no mode, key, rate or axis)."""
    return lambda p, s, x, *, train, key=None, rate=None, axis_name=None: forward(p, s, x)


def _no_params(key, in_dim, width, dtype, bias):
    """The init of a layer without parameters or state that keeps the width."""
    return {}, {}, in_dim


TRAIN_AND_EVAL = (("train mode", {"train": True}), ("eval mode", {"train": False}))

LAYERS = {
    "dense": Layer(lambda key, in_dim, width, dtype, bias: dense_init(key, in_dim, width, dtype, bias=bias),
                   _plain(dense_forward), dense_backward, LINEAR,
                   variants=(("with bias", {"bias": True}), ("no bias", {"bias": False}))),
    "relu": Layer(_no_params, _plain(relu_forward), relu_backward, ACTIVATION,
                  kinks=lambda x: x > 0),
    "leaky_relu": Layer(_no_params, _plain(leaky_relu_forward), leaky_relu_backward, ACTIVATION,
                        kinks=lambda x: x > 0),
    "tanh": Layer(_no_params, _plain(tanh_forward), tanh_backward, ACTIVATION),
    "batchnorm": Layer(lambda key, in_dim, width, dtype, bias: batchnorm_init(key, in_dim, dtype),
                       lambda p, s, x, *, train, key=None, rate=None, axis_name=None: batchnorm_forward(
                           p, s, x, train=train, axis_name=axis_name),
                       batchnorm_backward, NORM, variants=TRAIN_AND_EVAL),
    "input_dropout": Layer(_no_params, dropout_forward, dropout_backward, INPUT_NOISE, rate=True,
                           variants=TRAIN_AND_EVAL),
    "dropout": Layer(_no_params, dropout_forward, dropout_backward, HIDDEN_NOISE, rate=True,
                     variants=TRAIN_AND_EVAL),
}


def of_role(role: str) -> tuple:
    """The names of the layers of a role, in registry order."""
    return tuple(name for name, layer in LAYERS.items() if layer.role == role)


def single(role: str) -> str:
    """The name of the one layer of a role (LINEAR, NORM)."""
    (name,) = of_role(role)
    return name


def with_rate() -> tuple:
    """The layers that read a rate (and a key): the hyperparameter of each is named
    after the layer (RunConfig and train.Hyper fields: --dropout, --input-dropout)."""
    return tuple(name for name, layer in LAYERS.items() if layer.rate)


def activations() -> tuple:
    """The activations, the default (ReLU) first."""
    return of_role(ACTIVATION)

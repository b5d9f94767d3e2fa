"""Layers as pure functions, each with a backward pass derived by hand.

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


# ----------------------------------------------------------------- BatchNorm

BN_EPS = 1e-5
BN_MOMENTUM = 0.9


def batchnorm_init(key, in_dim: int, dtype=jnp.float32):
    """gamma = 1, beta = 0 (D,); running mean 0 and variance 1 (D,) as state."""
    del key
    params = {"gamma": jnp.ones((in_dim,), dtype), "beta": jnp.zeros((in_dim,), dtype)}
    state = {"mean": jnp.zeros((in_dim,), dtype), "var": jnp.ones((in_dim,), dtype)}
    return params, state, in_dim


def batchnorm_forward(params, state, x, *, train: bool, momentum: float = BN_MOMENTUM,
                      eps: float = BN_EPS):
    """Batch normalisation over the feature axis of x (N, D).

    train=True:  mu, var = mean and biased variance of the batch (D,);
                 xhat = (x - mu) / sqrt(var + eps);  y = gamma * xhat + beta;
                 running <- momentum * running + (1 - momentum) * batch statistic
                 (the CS231n convention; PyTorch's momentum=0.1 is our 0.9,
                 and PyTorch keeps the unbiased variance, we keep the biased one).
    train=False: the same with the running mean and variance, state unchanged.

    The batch statistics are not a gradient path in eval mode, so the two
    modes have different backward passes; the cache records which.
    """
    if train:
        if x.shape[0] < 2:
            raise SvhnJaxError(
                f"BatchNorm in train mode needs a batch of at least 2 rows to estimate a "
                f"variance, got x of shape {x.shape}. Use a larger batch or eval mode.")
        mu = x.mean(axis=0)
        var = ((x - mu) ** 2).mean(axis=0)
        new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mu,
                     "var": momentum * state["var"] + (1 - momentum) * var}
    else:
        mu, var, new_state = state["mean"], state["var"], state
    inv_std = jax.lax.rsqrt(var + eps)
    xhat = (x - mu) * inv_std
    y = params["gamma"] * xhat + params["beta"]
    return y, new_state, {"xhat": xhat, "inv_std": inv_std, "train": train}


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
    """
    xhat, inv_std = cache["xhat"], cache["inv_std"]
    grads = {"gamma": (dy * xhat).sum(axis=0), "beta": dy.sum(axis=0)}
    dxhat = dy * params["gamma"]
    if not cache["train"]:
        return grads, dxhat * inv_std
    dx = inv_std * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
    return grads, dx


# ------------------------------------------------------------------ registry


class Layer(NamedTuple):
    """A layer's three functions. Every forward takes `train` (only BatchNorm
    uses it), so the model calls each layer the same way."""

    init: Callable
    forward: Callable    # (params, state, x, train) -> y, new_state, cache
    backward: Callable   # (params, cache, dy) -> dparams, dx


LAYERS = {
    "dense": Layer(dense_init, lambda p, s, x, train: dense_forward(p, s, x), dense_backward),
    "relu": Layer(relu_init, lambda p, s, x, train: relu_forward(p, s, x), relu_backward),
    "batchnorm": Layer(batchnorm_init, lambda p, s, x, train: batchnorm_forward(p, s, x, train=train),
                       batchnorm_backward),
}

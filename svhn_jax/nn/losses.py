"""Softmax cross-entropy and the L2 penalty, each with a hand-derived gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_cross_entropy(logits, labels, smoothing=None):
    """Mean cross-entropy of softmax(logits) against integer labels, with label
    smoothing: the target of row n is q_n = (1 - s) onehot(labels_n) + s / K.

    logits (N, K) float, labels (N,) int in [0, K), smoothing s in [0, 1) (a float
    or a traced scalar; None: the plain cross-entropy) -> loss (), cache.

        L = -(1/N) sum_n sum_k q_nk log softmax(z_n)_k
          = -(1/N) sum_n [(1 - s) log p_{n,y_n} + (s / K) sum_k log p_nk]

    log softmax(z)_k = z_k - logsumexp(z), and logsumexp is computed as
    m + log sum exp(z - m) with m = max_k z_k, so no exp overflows for large
    logits (a logit of 1e4 is fine) and no log sees an underflowed 0.

    A traced s = 0 gives the plain loss and gradient in exact arithmetic, but the
    extra operations change how XLA fuses the program, and a fused exp or log may
    round its last bit differently: smoothing=None leaves them out of the program,
    so that a run without smoothing is the program of earlier releases, bit for bit.
    """
    z = logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True))
    log_probs = z - jnp.log(jnp.exp(z).sum(axis=1, keepdims=True))
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    if smoothing is None:
        return -picked.mean(), (log_probs, labels, smoothing)
    spread = log_probs.mean(axis=1)   # (1/K) sum_k log p_nk
    loss = -(1 - smoothing) * picked.mean() - smoothing * spread.mean()
    return loss, (log_probs, labels, smoothing)


def softmax_cross_entropy_backward(cache):
    """dL/dlogits = (softmax(logits) - q) / N,  shape (N, K), q the smoothed targets.

    From L = -(1/N) sum_n sum_k q_nk (z_nk - logsumexp(z_n)), sum_k q_nk = 1 and
    d logsumexp(z)/dz_k = softmax(z)_k: dL/dz_nk = (1/N) (softmax(z_n)_k - q_nk).
    """
    log_probs, labels, smoothing = cache
    n, k = log_probs.shape
    targets = jax.nn.one_hot(labels, k, dtype=log_probs.dtype)
    if smoothing is not None:
        targets = (1 - smoothing) * targets + smoothing / k
    return (jnp.exp(log_probs) - targets) / n


def _l2_mask(params, include):
    """True for the leaves whose dict key is in `include` (default: "W")."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in include, params)


def l2_penalty(params, reg, include=("W",)):
    """0.5 * reg * sum of squares of the leaves named in `include`.

    By default only Dense weight matrices "W": biases and BatchNorm's
    gamma/beta are not regularised (pass include=("W", "b", ...) to change that).
    """
    mask = _l2_mask(params, include)
    squares = [jnp.sum(p * p) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
    return 0.5 * reg * sum(squares, start=jnp.zeros((), jnp.result_type(*jax.tree.leaves(params))))


def l2_penalty_grad(params, reg, include=("W",)):
    """d/dp of l2_penalty: reg * p for included leaves, 0 for the rest (same tree)."""
    mask = _l2_mask(params, include)
    return jax.tree.map(lambda p, m: reg * p if m else jnp.zeros_like(p), params, mask)

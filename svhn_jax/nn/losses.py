"""Softmax cross-entropy and the L2 penalty, each with a hand-derived gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels.

    logits (N, K) float, labels (N,) int in [0, K) -> loss (), cache.

    log softmax(z)_k = z_k - logsumexp(z), and logsumexp is computed as
    m + log sum exp(z - m) with m = max_k z_k, so no exp overflows for large
    logits (a logit of 1e4 is fine) and no log sees an underflowed 0.
    """
    z = logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True))
    log_probs = z - jnp.log(jnp.exp(z).sum(axis=1, keepdims=True))
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return -picked.mean(), (log_probs, labels)


def softmax_cross_entropy_backward(cache):
    """dL/dlogits = (softmax(logits) - onehot(labels)) / N,  shape (N, K).

    From L = -(1/N) sum_n [z_{n,y_n} - logsumexp(z_n)] and
    d logsumexp(z)/dz_k = softmax(z)_k.
    """
    log_probs, labels = cache
    n, k = log_probs.shape
    return (jnp.exp(log_probs) - jax.nn.one_hot(labels, k, dtype=log_probs.dtype)) / n


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

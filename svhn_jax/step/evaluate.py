"""Evaluation on the device: loss, accuracy and predictions over a padded set, for
one model, K stacked models each on its own, or K models scored as one ensemble.

    EvalSet, make_eval_set   a set padded to whole chunks once (no copy, no recompile)
    evaluate                 one model: (mean cross-entropy, accuracy, predictions)
    evaluate_many            K stacked models: cross-entropy (K,), accuracy (K,)
    evaluate_ensemble        the first k stacked models' averaged probabilities
    confusion_matrix         counts of (true label, prediction)

BatchNorm runs in eval mode, with the running statistics. uint8 images are
normalised chunk by chunk with the run's `prep` (train.features).

Test-time averaging (tta = N > 1): a model's probabilities are the softmax
averaged over N copies of each image, the image itself and its whole-pixel
shifts data.augment.TTA_OFFSETS[1:N] (zero-filled, as training's shifts):
log p_c(x) = logsumexp_v(log_softmax(f(x_v))_c) - log N. An ensemble averages
its members' averages. tta = 1 is the plain program.

Ensemble scoring: with f_k(x) the logits of member k and p_k = softmax(f_k(x)), the
ensemble predicts p(x) = (1/K) sum_k p_k(x): its prediction is argmax_c p_c(x) and
its loss the cross-entropy of the average, -log p_y(x). In log space, for
stability: log p_c(x) = logsumexp_k(log_softmax(f_k(x))_c) - log K.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..data import augment
from ..data.arrays import empty_aligned
from ..errors import SvhnJaxError
from ..nn import model
from .train import features, steps_per_epoch


class EvalSet(NamedTuple):
    """An evaluation set padded to whole chunks: X (C, B, D), y (C, B), mask (C, B).
    X is uint8 images (D = 3072, evaluated with a `prep`) or float32 features."""

    X: Any
    y: Any
    mask: Any


def make_eval_set(X, y, chunk: int = 1024) -> EvalSet:
    """Pad X (N, ...) / y (N,) to a multiple of `chunk` once, so evaluating it every
    epoch neither copies nor recompiles. uint8 images stay uint8 (rows of 3072);
    anything else becomes float32. Padded on the host, in one aligned array that a
    CPU device shares (see train.put_images)."""
    X = np.asarray(X)
    n = X.shape[0]
    if n == 0:
        raise SvhnJaxError("cannot evaluate on an empty set")
    chunk = min(chunk, n)
    c = steps_per_epoch(n, chunk)
    rows = X.reshape(n, -1)
    Xp = empty_aligned((c * chunk, rows.shape[1]), np.uint8 if X.dtype == np.uint8 else np.float32)
    Xp[:n], Xp[n:] = rows, 0
    yp = np.zeros(c * chunk, np.int32)
    yp[:n] = y
    mask = np.arange(c * chunk) < n
    return EvalSet(*jax.device_put((Xp.reshape(c, chunk, -1), yp.reshape(c, chunk),
                                    mask.reshape(c, chunk))))


def check_tta(tta: int) -> int:
    """tta itself, or a clear error: the number of copies test-time averaging scores."""
    if isinstance(tta, bool) or not isinstance(tta, int) or not 1 <= tta <= len(augment.TTA_OFFSETS):
        raise SvhnJaxError(f"--tta must be >= 1 and <= {len(augment.TTA_OFFSETS)} (copies of each "
                           f"image to average over; 1: the image alone), got {tta!r}")
    return tta


def _log_probs(params, bn_state, x, spec, prep, tta: int):
    """log of the softmax averaged over x's tta copies (B, classes): one forward pass
    over the copies stacked as rows (BatchNorm in eval mode acts row by row)."""
    z = features(x, prep)
    b, d = z.shape
    copies = [augment.translate(z, dy, dx, (32, 32, d // 1024)) for dy, dx in augment.TTA_OFFSETS[:tta]]
    logits, _, _ = model.forward(params, bn_state, jnp.concatenate(copies), spec, train=False)
    logp = jax.nn.log_softmax(logits.reshape(tta, b, -1), axis=-1)
    return jax.scipy.special.logsumexp(logp, axis=0) - jnp.log(np.float32(tta))


def _sums(params, bn_state, es: EvalSet, spec, prep, tta: int = 1):
    def one(chunk):
        x, y, m = chunk
        if tta > 1:
            logp = _log_probs(params, bn_state, x, spec, prep, tta)
            nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
            pred = jnp.argmax(logp, axis=1).astype(jnp.int32)
            return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum((pred == y) & m), pred
        logits, _, _ = model.forward(params, bn_state, features(x, prep), spec, train=False)
        z = logits - logits.max(axis=1, keepdims=True)
        nll = jnp.log(jnp.exp(z).sum(axis=1)) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
        pred = jnp.argmax(logits, axis=1).astype(jnp.int32)
        return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum((pred == y) & m), pred

    nll, correct, pred = jax.lax.map(one, es)
    n = es.mask.sum()
    return nll.sum() / n, correct.sum() / n, pred.reshape(-1)


_evaluate = jax.jit(_sums, static_argnames=("spec", "prep", "tta"))


def evaluate(params, bn_state, es: EvalSet, spec, prep=None, tta: int = 1):
    """(mean cross-entropy, accuracy, predictions (N,)) of one model; prep: the
    preprocess.DevicePrep of uint8 images (see train.features); tta: copies of each
    image averaged over (the module's docstring)."""
    loss, acc, pred = _evaluate(params, bn_state, es, spec, prep, check_tta(tta))
    return float(loss), float(acc), np.asarray(pred)[: int(es.mask.sum())]


def _replicated(tree, mesh):
    """tree readable in every process (models spread over several processes' devices)."""
    if mesh is None or jax.process_count() == 1:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))


@partial(jax.jit, static_argnames=("spec", "prep", "mesh", "tta"))
def _many(params, bn_state, es, spec, prep, mesh, tta):
    loss, acc, _ = jax.vmap(lambda p, s: _sums(p, s, es, spec, prep, tta))(params, bn_state)
    return _replicated((loss, acc), mesh)


def evaluate_many(params, bn_state, es: EvalSet, spec, prep=None, mesh=None, tta: int = 1):
    """Mean cross-entropy (K,) and accuracy (K,) of K stacked parameter sets, as
    NumPy arrays (read in every process when the models are spread over a mesh)."""
    loss, acc = _many(params, bn_state, es, spec, prep, mesh, check_tta(tta))
    return np.asarray(loss), np.asarray(acc)


@partial(jax.jit, static_argnames=("spec", "k", "prep", "mesh", "tta"))
def _ensemble(params, bn_state, es: EvalSet, spec, k: int, prep, mesh, tta: int = 1):
    """Over the first k stacked members: mean NLL of the averaged probabilities,
    its accuracy, its predictions (C*B,), and each member's own accuracy (k,)."""
    params, bn_state = jax.tree.map(lambda a: a[:k], (params, bn_state))

    def one(chunk):
        x, y, m = chunk
        if tta > 1:   # each member's averaged log-probabilities stand for its logits
            logits = jax.vmap(lambda p, s: _log_probs(p, s, x, spec, prep, tta))(params, bn_state)
        else:
            x = features(x, prep)
            logits = jax.vmap(lambda p, s: model.forward(p, s, x, spec, train=False)[0])(params, bn_state)
        log_avg = jax.scipy.special.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - jnp.log(k)
        nll = -jnp.take_along_axis(log_avg, y[:, None], axis=1)[:, 0]
        pred = jnp.argmax(log_avg, axis=1).astype(jnp.int32)
        member_correct = jnp.sum((jnp.argmax(logits, axis=-1) == y) & m, axis=1)
        return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum((pred == y) & m), pred, member_correct

    nll, correct, pred, member_correct = jax.lax.map(one, es)
    n = es.mask.sum()
    return _replicated((nll.sum() / n, correct.sum() / n, pred.reshape(-1),
                        member_correct.sum(axis=0) / n), mesh)


def evaluate_ensemble(params, bn_state, es: EvalSet, spec, k: int | None = None, prep=None,
                      mesh=None, tta: int = 1):
    """(loss, accuracy, predictions (N,), member accuracies [k]) of the ensemble of the
    first k (default all) members stacked in params/bn_state, BatchNorm in eval mode."""
    k = jax.tree.leaves(params)[0].shape[0] if k is None else k
    loss, acc, pred, members = _ensemble(params, bn_state, es, spec, k, prep, mesh, check_tta(tta))
    return (float(loss), float(acc), np.asarray(pred)[: int(es.mask.sum())],
            [float(a) for a in np.asarray(members)])


def confusion_matrix(y_true, y_pred, k: int = 10) -> np.ndarray:
    """(K, K) int64 counts: rows are true labels, columns predictions."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m

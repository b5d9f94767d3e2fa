"""Stratified train/validation/test partitions of a labelled dataset."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import SvhnJaxError

__all__ = ["stratified_split"]


def stratified_split(y, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices 0..N-1 into parts of the given fractions, stratified by class.

    Args:
      y: (N,) integer labels.
      fractions: one float per part, each in (0, 1], summing to 1, e.g. (0.8, 0.1, 0.1).
      seed: the same seed gives the same parts.

    Returns:
      one sorted int64 index array per fraction; the parts are disjoint and
      cover 0..N-1. Within each class of n_c images, part k holds
      n_c * fractions[k] images rounded up or down (largest remainder, ties
      broken at random), so class proportions are off by less than 1 image.

    Raises: SvhnJaxError for bad fractions, empty labels, or an empty part.
    """
    try:
        fr = np.asarray(fractions, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SvhnJaxError(f"fractions must be numbers, got {fractions!r}. Fix: e.g. "
                           f"(0.8, 0.1, 0.1).") from None
    if fr.size == 0 or not np.all(np.isfinite(fr)) or np.any(fr <= 0) or np.any(fr > 1):
        raise SvhnJaxError(f"each split fraction must be in (0, 1], got {list(fractions)}. "
                           f"Fix: e.g. (0.8, 0.1, 0.1).")
    if abs(fr.sum() - 1.0) > 1e-6:
        raise SvhnJaxError(f"split fractions must sum to 1, got {list(fractions)} "
                           f"(sum {fr.sum():g}). Fix: e.g. (0.8, 0.1, 0.1).")
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise SvhnJaxError(f"stratified_split needs a non-empty 1-D integer label array, "
                           f"got shape {y.shape} dtype {y.dtype}.")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        want = len(idx) * fr
        counts = np.floor(want).astype(np.int64)
        rest = len(idx) - counts.sum()
        if rest:
            frac = want - counts
            # largest remainder first; random tie-break so no part is always favoured
            order = np.lexsort((rng.permutation(len(fr)), -frac))
            counts[order[:rest]] += 1
        for k, piece in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
            parts[k].append(piece)
    out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    for k, p in enumerate(out):
        if p.size == 0:
            raise SvhnJaxError(
                f"split fraction {fr[k]:g} of {y.size} images gives an empty part. "
                f"Fix: use a larger fraction or more data.")
    return out

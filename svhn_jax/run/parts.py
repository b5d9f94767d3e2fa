"""A run's data: load what the configuration names, split it, and count images shared
between its parts (data.image_fingerprints), so that a score on images the run trained
on cannot pass unnoticed.

The partition depends only on the data and `split_seed`, never on the model `seed`:
every seed of a seed study is scored on the same held-out images. No JAX here.
"""

from __future__ import annotations

import numpy as np

from .. import data
from ..config import RunConfig
from ..errors import SvhnJaxError


def load(c: RunConfig, *, download: bool = False, spec: str | None = None, data_dir=None) -> dict:
    """{split: (X uint8, y int32)} of `spec` (default the run's data, with its extra
    images when c.extra); see data.load."""
    spec, data_dir = spec or c.data, data_dir or c.data_dir
    extra = c.extra and spec == c.data
    data.ensure_available(spec, data_dir, download=download, extra=extra)
    return data.load(spec, data_dir=data_dir, synthetic_n=c.synthetic_n, seed=c.split_seed,
                     extra=extra)


def split(c: RunConfig, loaded: dict, *, consume: bool = False) -> dict:
    """{"train", "val", "test": (X uint8, y int32)} as the configuration describes.

    Data with an official test split: its train part is split into train and
    validation (stratified, seeded with split_seed). Data without one (an .npz,
    synthetic): split into train/validation/test the same way. With train_on_val,
    validation images are trained on too (a final fit after choosing on validation).

    consume: `loaded` is the caller's to give up, so the parts are rearranged inside
    its image array instead of copied out of it (with SVHN's extra images a copy
    of the training part alone would be 1.7 GB): the training part gathered into
    its first rows, the other parts copied into the rows after it while they fit
    (with train_on_val the training part holds the validation images too, leaving
    room for fewer). An official test split stays the array it was loaded as.
    """
    source, parts = _partition(c, {k: y for k, (_, y) in loaded.items()})
    X, y = loaded[source]
    out = {k: (X[i], y[i]) for k, i in parts.items() if k != "train"}
    i = parts["train"]
    if consume and X.flags.writeable and X.flags.c_contiguous:
        used = len(i)
        out["train"] = (gather_in_place(X, i), y[i])
        for k, (Xk, yk) in list(out.items())[:-1]:  # the copies move into the free rows
            if used + len(Xk) <= len(X):
                X[used:used + len(Xk)] = Xk
                out[k] = (X[used:used + len(Xk)], yk)
                used += len(Xk)
    else:
        out["train"] = (X[i], y[i])
    if "test" in loaded:
        out["test"] = loaded["test"]
    return out


def load_split(c: RunConfig, *, download: bool = False) -> dict:
    return split(c, load(c, download=download), consume=True)


def _partition(c: RunConfig, labels: dict) -> tuple[str, dict]:
    """(the loaded split the parts are drawn from, {part: sorted row indices into it})."""
    if "all" in labels:
        f_val, f_test = c.val_fraction, c.test_fraction
        source, names, fractions = "all", ("train", "val", "test"), (1 - f_val - f_test, f_val, f_test)
    else:
        source, names, fractions = "train", ("train", "val"), (1 - c.val_fraction, c.val_fraction)
    parts = dict(zip(names, data.stratified_split(labels[source], fractions, c.split_seed)))
    if c.train_on_val:
        parts["train"] = np.sort(np.concatenate([parts["train"], parts["val"]]))
    return source, parts


def load_split_rows(c: RunConfig, train_rows, *, download: bool = False) -> tuple[dict, int]:
    """`load_split` for a process that trains on some of the training rows: of the
    training part only the rows train_rows(n_train) (a slice of it) are read (see
    data.open_rows for the sources that can be read in part); validation and test
    whole. Returns (parts, n_train), parts["train"] holding those rows alone."""
    data.ensure_available(c.data, c.data_dir, download=download, extra=c.extra)
    opened = data.open_rows(c.data, data_dir=c.data_dir, synthetic_n=c.synthetic_n,
                            seed=c.split_seed, extra=c.extra)
    source, parts = _partition(c, {k: rows.y for k, rows in opened.items()})
    rows = opened[source]
    n = len(parts["train"])
    parts["train"] = parts["train"][train_rows(n)]
    out = {k: (rows.take(i), rows.y[i]) for k, i in parts.items()}
    if "test" in opened:
        test = opened["test"]
        out["test"] = (test.take(np.arange(len(test.y))), test.y)
    return out, n


def gather_in_place(X: np.ndarray, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """X[idx] for sorted, distinct indices, written over X's first len(idx) rows (a
    view of them is returned; X's other rows are left as they were).

    Safe in place: sorted distinct indices have idx[j] >= j, so the rows a chunk
    reads were not yet overwritten by earlier chunks (which wrote rows below its
    start), and within a chunk the gather is copied before it is written.
    """
    if np.any(np.diff(idx) <= 0):
        raise SvhnJaxError("gather_in_place needs sorted, distinct row indices "
                           "(np.unique(idx) gives them)")
    for s in range(0, len(idx), chunk):
        rows = idx[s:s + chunk]
        X[s:s + len(rows)] = X[rows]
    return X[:len(idx)]


def split_overlaps(parts: dict, train_fingerprints: np.ndarray) -> dict:
    """Images of the validation and test parts that also occur in the training part
    (duplicates in the data itself): {"overlap_train_val": k, "overlap_train_test": k}."""
    return {f"overlap_train_{k}": data.count_overlap(data.image_fingerprints(parts[k][0]),
                                                     train_fingerprints)
            for k in ("val", "test") if k in parts}

"""A cache of decoded arrays: `.npy` files keyed by a digest of what they were decoded from.

    write_cache(folder, "train", key, X, y)   # best effort: skipped if not writable
    read_cache(folder, "train", key, n)       # (X, y), or None when absent/stale/corrupt

Decoding SVHN's PNGs takes many times longer than reading `.npy` files, so
the prepared dataset's decoded arrays are kept beside it. A cache is only
ever a copy: any problem reading it means decoding again, never an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_with
from .arrays import validate_arrays

__all__ = ["cache_paths", "write_cache", "read_cache"]


def cache_paths(folder: Path, split: str, key: str) -> tuple[Path, Path]:
    """The X and y files of one split under one key."""
    return folder / f"{split}.{key}.X.npy", folder / f"{split}.{key}.y.npy"


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    write_with(path, lambda f: np.save(f, arr))


def write_cache(folder: Path, split: str, key: str, X: np.ndarray, y: np.ndarray) -> None:
    """Write one split's arrays, deleting its files under other keys; silent on OSError."""
    try:
        px, py = cache_paths(folder, split, key)
        folder.mkdir(exist_ok=True)
        for old in folder.glob(f"{split}.*.npy"):  # stale caches of an older preparation
            if old not in (px, py):
                old.unlink(missing_ok=True)
        _save_npy_atomic(py, y)
        _save_npy_atomic(px, X)
    except OSError:
        pass


def read_cache(folder: Path, split: str, key: str, n: int):
    """(X uint8 (n, 32, 32, 3), y int32 (n,)) from the cache, or None to decode again."""
    try:
        px, py = cache_paths(folder, split, key)
        if not (px.is_file() and py.is_file()):
            return None
        X, y = np.load(px, allow_pickle=False), np.load(py, allow_pickle=False)
        X, y = validate_arrays(X, y, str(px))
        return (X, y) if X.shape[0] == n else None
    except (OSError, ValueError):  # unreadable or invalid cache (DataError is a ValueError)
        return None

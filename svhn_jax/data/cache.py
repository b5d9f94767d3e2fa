"""A cache of decoded arrays: `.npy` files keyed by a digest of what they were decoded from.

    write_cache(folder, "train", key, X, y)   # best effort: skipped if not writable
    read_cache(folder, "train", key, X, y)    # fills X, y in place; False: decode again

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


def _read_npy_into(path: Path, out: np.ndarray) -> bool:
    """Read a `.npy` file straight into `out` (no second copy); False if it does not fit."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):  # np.save writes 1.0 for these arrays
            return False
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(f)
        if shape != out.shape or fortran_order or dtype != out.dtype:
            return False
        return f.readinto(memoryview(out).cast("B")) == out.nbytes


def read_cache(folder: Path, split: str, key: str, X: np.ndarray, y: np.ndarray) -> bool:
    """Fill X uint8 (n, 32, 32, 3) and y int32 (n,), C-contiguous, from the cache.

    Reads into the caller's arrays (say, rows of a larger one) with no
    temporary copy. Returns False (X, y partly written) when the cache is
    absent, stale, of another size or invalid: decode again then.
    """
    try:
        px, py = cache_paths(folder, split, key)
        if not (px.is_file() and py.is_file()):
            return False
        if not (_read_npy_into(py, y) and _read_npy_into(px, X)):
            return False
        validate_arrays(X, y, str(px))
        return True
    except (OSError, ValueError):  # unreadable or invalid cache (DataError is a ValueError)
        return False

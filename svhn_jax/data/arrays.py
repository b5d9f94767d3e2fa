"""The array contract every source meets, and the reader of the official `.mat` files.

Every source returns, per split, a pair

    X: uint8 (N, 32, 32, 3)  RGB pixels, C-contiguous, N >= 1
    y: int32 (N,)            digits 0..9 (the official label 10 is digit 0)

`validate_arrays` enforces it with a message naming the problem and the fix.
`read_mat` lives here, not beside the loaders, because both the loaders and
the tensorflow-datasets builder need it: neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ..errors import DataError

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)

__all__ = ["NUM_CLASSES", "IMAGE_SHAPE", "validate_arrays", "read_mat", "empty_aligned", "Rows"]

ALIGN = 64  # bytes: JAX's CPU client shares (does not copy) host arrays aligned to this


class Rows(NamedTuple):
    """A split whose images are read only when asked for (data.open_rows).

    y: int32 (N,), all the labels; take(idx) -> uint8 (len(idx), 32, 32, 3),
    the images of the rows idx (an index array), in that order.
    """

    y: np.ndarray
    take: Callable[[np.ndarray], np.ndarray]


def empty_aligned(shape: tuple, dtype) -> np.ndarray:
    """np.empty(shape, dtype) whose data start on an ALIGN-byte boundary.

    The large image arrays are allocated this way so that placing them on a
    CPU device (jax.device_put) shares their memory instead of copying it.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def validate_arrays(X, y, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one (X, y) pair; return X uint8 (N, 32, 32, 3) C-contiguous, y int32 (N,).

    X is copied only if it is not C-contiguous already, so `X.reshape(N, -1)`
    of the result is always a view: images stay uint8 rows of 3072 bytes.

    `y` of shape (N, 1) is flattened; integral float labels are accepted.
    Raises DataError naming `source`, the problem and the fix for: wrong shape,
    non-uint8 or non-finite pixels, labels negative / non-integer / >= 10,
    X and y of different lengths, and an empty dataset.
    """
    X, y = np.asarray(X), np.asarray(y)
    want = "expected X uint8 of shape (N, 32, 32, 3) (N images, height, width, RGB)"
    if X.ndim == 3 and X.shape[1:] == (32, 32):
        raise DataError(
            f"{source}: X has shape {X.shape}: grayscale images without a channel "
            f"axis; {want}. Fix: X = np.repeat(X[..., None], 3, axis=-1)")
    if X.ndim == 4 and X.shape[:3] == IMAGE_SHAPE and X.shape[3] != 3:
        raise DataError(
            f"{source}: X has shape {X.shape}, the .mat layout (32, 32, 3, N); {want}. "
            f"Fix: X = np.moveaxis(X, -1, 0)")
    if X.ndim == 4 and X.shape[1] == 3 and X.shape[2:] == (32, 32):
        raise DataError(
            f"{source}: X has shape {X.shape}, channels first; {want}. "
            f"Fix: X = X.transpose(0, 2, 3, 1)")
    if X.ndim != 4 or X.shape[1:] != IMAGE_SHAPE:
        size = (f" ({X.shape[1]}x{X.shape[2]} images)" if X.ndim >= 3 else "")
        raise DataError(
            f"{source}: X has shape {X.shape}{size}; {want}. Fix: resize/convert "
            f"the images to 32x32 RGB.")
    if X.shape[0] == 0:
        raise DataError(f"{source}: the dataset is empty (0 images). Fix: point to a "
                        f"file or folder that holds images.")
    if X.dtype != np.uint8:
        if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
            bad = int(np.size(X) - np.isfinite(X).sum())
            raise DataError(
                f"{source}: X holds {bad} NaN or inf values (dtype {X.dtype}). Fix: "
                f"clean the data; pixels must be uint8 0..255.")
        raise DataError(
            f"{source}: X has dtype {X.dtype}; expected uint8 pixels 0..255. Fix: "
            f"X = np.clip(np.round(X), 0, 255).astype(np.uint8) (multiply by 255 "
            f"first if the values are in [0, 1]).")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: y has shape {y.shape}; expected (N,) labels 0..9.")
    if y.shape[0] != X.shape[0]:
        raise DataError(
            f"{source}: X holds {X.shape[0]} images but y holds {y.shape[0]} labels; "
            f"they must have the same length N. Fix: pair each image with one label.")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)) \
            or y.dtype == np.bool_:
        raise DataError(f"{source}: y has dtype {y.dtype}; expected integer labels 0..9.")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or np.any(y != np.round(y)):
            raise DataError(
                f"{source}: y holds non-integer labels (e.g. "
                f"{y[~np.isfinite(y) | (y != np.round(y))][0]}); expected integers 0..9.")
    if y.min() < 0:
        raise DataError(f"{source}: y holds negative labels (min {y.min()}); expected "
                        f"digits 0..9.")
    if y.max() >= NUM_CLASSES:
        raise DataError(
            f"{source}: y holds labels >= 10 (max {y.max()}); expected digits 0..9. "
            f"Fix: for the official .mat labels 1..10 (10 = digit 0) use y % 10.")
    return np.ascontiguousarray(X), y.astype(np.int32)


def read_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one official SVHN `.mat` file (scipy only, no TensorFlow).

    The file holds X uint8 (32, 32, 3, N) and y (N, 1) with labels 1..10.

    Returns:
      X: uint8 (N, 32, 32, 3), transposed from the file's layout.
      y: int32 (N,) digits 0..9 (label 10 becomes 0).

    Raises:
      DataError: unreadable/truncated file, missing `X`/`y`, wrong layout, or
        labels outside 1..10 (0 is accepted as the digit itself).
    """
    import scipy.io

    path = Path(path)
    fix = f"Fix: delete {path} and download it again (svhn-jax download --dir {path.parent})."
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises many types for truncated/corrupt files
        raise DataError(
            f"Cannot read {path}: it is truncated or not a MATLAB .mat file "
            f"({type(e).__name__}: {e}). {fix}") from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(
            f"{path} has no {' or '.join(missing)} array (found {found}); an SVHN "
            f".mat file holds X uint8 (32, 32, 3, N) and y (N, 1). {fix}")
    X, y = mat["X"], np.asarray(mat["y"])
    if X.ndim != 4 or X.shape[:3] != IMAGE_SHAPE:
        raise DataError(
            f"{path}: X has shape {X.shape}; an SVHN .mat file holds X of shape "
            f"(32, 32, 3, N). {fix}")
    n = X.shape[3]
    if y.size != n:
        raise DataError(f"{path}: X holds {n} images but y holds {y.size} labels. {fix}")
    y = y.reshape(n)
    if n and np.issubdtype(y.dtype, np.number) and y.min() >= 0 and y.max() > 9:
        if y.max() > 10:
            raise DataError(
                f"{path}: labels must be 1..10 (10 meaning digit 0); found max "
                f"{y.max()}. {fix}")
        y = y % 10  # official label 10 is digit 0
    rows = empty_aligned((n,) + IMAGE_SHAPE, X.dtype)   # the copy that reorders X, aligned
    rows[:] = np.moveaxis(X, -1, 0)
    return validate_arrays(rows, y, str(path))

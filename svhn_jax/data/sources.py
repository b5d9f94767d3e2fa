"""Where images come from: `load(spec)` for every kind of source, and synthetic data.

Every loader returns {split name: (X, y)} meeting the contract of `arrays`:
X uint8 (N, 32, 32, 3) C-contiguous, y int32 (N,) digits 0..9.

    "svhn"          the tensorflow-datasets `svhn_cropped` 3.1.0 dataset, prepared
                    in array_record format (see `prepared`); -> "train", "test".
    DIR             a folder holding the official train_32x32.mat and test_32x32.mat;
                    -> "train", "test".
    FILE.npz        arrays X uint8 (N, 32, 32, 3) and y int 0..9; -> "all".
    "synthetic"     random SVHN-shaped data (`synthetic`); -> "all".

Nothing here imports tensorflow_datasets, scipy or JAX at module import time,
so a missing-data error comes back fast.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError, SvhnJaxError
from .arrays import IMAGE_SHAPE, NUM_CLASSES, Rows, empty_aligned, read_mat, validate_arrays
from .fetch import OFFICIAL
from .hints import offline_options
from .prepared import load_prepared, open_prepared

__all__ = ["load", "open_rows", "synthetic"]


def load(spec: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
         synthetic_n: int = 10_000, seed: int = 0,
         extra: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load a dataset: {split: (X uint8 (N, 32, 32, 3), y int32 (N,) in 0..9)}.

    spec:
      "svhn"       prepared tfds `svhn_cropped` in `data_dir` (argument, else
                   $TFDS_DATA_DIR, else ~/tensorflow_datasets) -> "train", "test";
                   with `extra`, "train" is train followed by extra, in one array.
                   The first load decodes PNGs and caches .npy files in
                   `<data_dir>/svhn_cropped/3.1.0/svhn_jax_cache/` (skipped if
                   not writable); later loads read the cache.
      folder       holding train_32x32.mat and test_32x32.mat -> "train", "test".
      FILE.npz     arrays X (N, 32, 32, 3) uint8 and y 0..9 -> "all" (no cache written).
      "synthetic"  `synthetic(synthetic_n, seed)` -> "all".
    Keywords win over paths: use "./svhn" for a folder named svhn.

    Raises: DataError (missing/corrupt/invalid data, each with the fix);
      SvhnJaxError for `extra` with any spec but "svhn".
    """
    if isinstance(spec, str) and spec == "svhn":
        return load_prepared(data_dir, extra=extra)
    if extra:
        raise SvhnJaxError(
            f"extra (SVHN's 531,131 extra training images) needs --data svhn, not "
            f"{str(spec)!r}. Fix: svhn-jax download --extra --dir D && svhn-jax prepare "
            f"--extra --mat-dir D, then --data svhn --extra; or drop --extra.")
    if isinstance(spec, str) and spec == "synthetic":
        return {"all": synthetic(synthetic_n, seed)}
    path = Path(spec).expanduser()
    accepted = ("Accepted: 'svhn' (SVHN prepared by svhn-jax prepare or svhn-jax train "
                f"--download). {offline_options()}")
    if not path.exists():
        raise DataError(f"{path} does not exist. {accepted}")
    if path.is_dir():
        return _load_mat_dir(path)
    if path.suffix.lower() == ".npz":
        return _load_npz(path)
    if path.suffix.lower() == ".mat":
        raise DataError(f"{path} is a single .mat file. Fix: pass the folder that "
                        f"holds it and its partner: {path.parent}. {accepted}")
    raise DataError(f"{path} is not a data source this program reads. {accepted}")


def _load_mat_dir(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    missing = [OFFICIAL[s][0] for s in ("train", "test")
               if not (folder / OFFICIAL[s][0]).is_file()]
    if missing:
        raise DataError(
            f"{folder} is a folder but lacks {', '.join(missing)}. Fix: svhn-jax "
            f"download --dir {folder}; or pass a folder holding train_32x32.mat and "
            f"test_32x32.mat, a .npz file, 'svhn' or 'synthetic'.")
    return {s: read_mat(folder / OFFICIAL[s][0]) for s in ("train", "test")}


def _load_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise DataError(
                    f"{path} has no {' or '.join(missing)} array (it holds {keys}). "
                    f"Fix: save it with np.savez(path, X=images_uint8_N_32_32_3, "
                    f"y=labels_0_to_9).")
            X, y = npz["X"], npz["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(
            f"Cannot read {path}: truncated or not a valid .npz ({type(e).__name__}: "
            f"{e}). Fix: copy or write the file again (np.savez(path, X=..., y=...)).") \
            from None
    return {"all": validate_arrays(X, y, str(path))}


def synthetic(n: int, seed: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """Random SVHN-shaped data: X uint8 (n, 32, 32, 3), y int32 (n,) in 0..9.

    Each class has its own random template (values 0..127); an image is its
    class template plus noise 0..127, so the data is learnable but not
    trivially. The noise of an image is the XOR of three rows drawn from three
    banks of 1024 random images (10^9 combinations), much faster than drawing
    3072 fresh random bytes per image. Memory: X itself (3072 bytes per image)
    plus a few MB, since everything is uint8 and built in place, chunk by
    chunk; no float or second full-size copy is ever made. Deterministic per
    seed (the chunk size does not change the result).

    rows: indices of the images to make (default all): the result is then
    (X[rows], y[rows]) of the whole set, without making the others.
    """
    n = int(n)
    if n < 1:
        raise SvhnJaxError(f"synthetic data needs n >= 1 images, got {n}.")
    d = 32 * 32 * 3
    rng = np.random.default_rng(seed)
    y = _synthetic_labels(rng, n)
    templates = rng.integers(0, 128, size=(NUM_CLASSES, d), dtype=np.uint8)
    bank = 1024
    banks = np.frombuffer(rng.bytes(3 * bank * d), np.uint8).reshape(3, bank, d)
    pick = rng.integers(0, bank, size=(3, n))
    if rows is not None:
        rows = np.asarray(rows, np.int64)
        y, pick = y[rows], pick[:, rows]
    m = len(y)
    X = empty_aligned((m, d), np.uint8)
    chunk = 128  # 384 KiB of rows: the chunk and its scratch stay in the CPU cache
    tmp = np.empty((chunk, d), np.uint8)
    for s in range(0, m, chunk):
        e = min(s + chunk, m)
        out, t = X[s:e], tmp[: e - s]
        np.take(banks[0], pick[0, s:e], axis=0, out=out)
        for b in (1, 2):
            np.take(banks[b], pick[b, s:e], axis=0, out=t)
            out ^= t
        out >>= 1
        np.take(templates, y[s:e], axis=0, out=t)
        out += t
    return X.reshape((m,) + IMAGE_SHAPE), y


def _synthetic_labels(rng, n: int) -> np.ndarray:
    """The first draw of `synthetic`: its labels, without making any image."""
    return rng.integers(0, NUM_CLASSES, size=n, dtype=np.int32)


def open_rows(spec: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
              synthetic_n: int = 10_000, seed: int = 0,
              extra: bool = False) -> dict[str, Rows]:
    """`load`, with each split's images read only when asked for: {split: Rows}.

    For a process that trains on some of the rows (several processes, each
    holding its devices' share). Prepared SVHN reads the rows asked for from
    its memory-mapped cache (`prepared.open_prepared`); synthetic data makes
    only those rows. A `.npz` or a `.mat` folder cannot be read in part: it is
    loaded whole, and `take` copies rows out of it.
    """
    if isinstance(spec, str) and spec == "svhn":
        return open_prepared(data_dir, extra=extra)
    if isinstance(spec, str) and spec == "synthetic" and not extra:
        y = _synthetic_labels(np.random.default_rng(seed), int(synthetic_n))
        return {"all": Rows(y, lambda idx: synthetic(synthetic_n, seed, rows=idx)[0])}
    return {k: Rows(y, X.__getitem__) for k, (X, y) in
            load(spec, data_dir=data_dir, synthetic_n=synthetic_n, seed=seed, extra=extra).items()}

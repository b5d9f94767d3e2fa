"""SVHN as a prepared tensorflow-datasets dataset: layout, preparation, decoding.

    prepare(mat_dir, data_dir)               # .mat files -> svhn_cropped 3.1.0, array_record
    ensure_available("svhn", data_dir, download=True)   # download + prepare when missing
    load_prepared(data_dir)                  # {"train": (X, y), "test": (X, y)}
    load_prepared(data_dir, extra=True)      # "train" = train then extra, one array

The dataset is the stock `svhn_cropped` 3.1.0 (same name, version and
features), prepared without TensorFlow by `tfds_builder.SvhnCroppedNoTF` and
read back by the stock `tfds.data_source`. tensorflow_datasets is imported
only inside `prepare` and the decoder, so a missing dataset is reported fast.
Decoded arrays are cached as `.npy` beside the dataset (see `cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError, SvhnJaxError
from .arrays import IMAGE_SHAPE, Rows, empty_aligned, validate_arrays
from .cache import cache_paths, read_cache, write_cache
from .fetch import BASE_URL, OFFICIAL, official, verify_file
from .fetch import download as download_files
from .hints import offline_options

TFDS_NAME = "svhn_cropped"
TFDS_VERSION = "3.1.0"
CACHE_DIRNAME = "svhn_jax_cache"

__all__ = ["TFDS_NAME", "TFDS_VERSION", "CACHE_DIRNAME", "default_data_dir",
           "dataset_dir", "prepared_splits", "prepare", "ensure_available",
           "load_prepared", "open_prepared"]


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The tfds data dir: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser()


def dataset_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`<data_dir>/svhn_cropped/3.1.0`, where the prepared dataset lives."""
    return default_data_dir(data_dir) / TFDS_NAME / TFDS_VERSION


def _info_path(data_dir) -> Path:
    return dataset_dir(data_dir) / "dataset_info.json"


def prepared_splits(data_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Splits of the prepared dataset and their sizes; {} when not prepared."""
    path = _info_path(data_dir)
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
        return {s["name"]: sum(int(n) for n in s.get("shardLengths", []))
                for s in info.get("splits", [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path} is unreadable or corrupt ({type(e).__name__}: {e}). Fix: delete "
            f"{path.parent} and prepare again: svhn-jax prepare --mat-dir D "
            f"--data-dir {default_data_dir(data_dir)}") from None


def _not_prepared_message(data_dir: Path) -> str:
    return (
        f"SVHN is not prepared in {data_dir} (no {TFDS_NAME}/{TFDS_VERSION}/"
        f"dataset_info.json). Fix: svhn-jax train --download --data-dir {data_dir} ... "
        f"(downloads train+test, 246 MB, from {BASE_URL} and prepares them)  or  "
        f"svhn-jax download --dir D && svhn-jax prepare --mat-dir D --data-dir {data_dir}. "
        f"{offline_options()}")


def _already_prepared(data_dir: Path, have, missing, mat_dir) -> DataError:
    """A prepared dataset is never extended: the fix is to prepare it again, whole."""
    extra = " --extra" if "extra" in list(have) + list(missing) else ""
    return DataError(
        f"{dataset_dir(data_dir)} is already prepared with splits {sorted(have)}, "
        f"without {missing}. Fix: delete {dataset_dir(data_dir)} and run svhn-jax "
        f"prepare --mat-dir {mat_dir or 'D'} --data-dir {data_dir}{extra} (svhn-jax "
        f"download --dir D{extra} fetches the .mat files).")


def prepare(mat_dir: str | os.PathLike, data_dir: str | os.PathLike | None, *,
            splits: Sequence[str] = ("train", "test"), verify: bool = True) -> Path:
    """Build tfds `svhn_cropped` 3.1.0 (array_record) in `data_dir` from `.mat` files.

    Uses `tfds_builder.SvhnCroppedNoTF`: no TensorFlow, no network.
    `mat_dir` must hold `<split>_32x32.mat` for every split in `splits`
    (`extra` is optional). With `verify`, each file is checked against the
    official size and sha256 first (pass verify=False for custom files).
    Does nothing when the dataset is already prepared with these splits.

    Returns: the data dir (pass it to `load("svhn", data_dir=...)`).
    """
    mat_dir = Path(mat_dir).expanduser()
    data_dir = default_data_dir(data_dir)
    for split in splits:
        official(split)
    if not splits:
        raise SvhnJaxError("prepare needs at least one split. Fix: splits=('train', 'test')")
    have = prepared_splits(data_dir)
    if have:
        missing = [s for s in splits if s not in have]
        if not missing:
            return data_dir
        raise _already_prepared(data_dir, have, missing, mat_dir)
    if not mat_dir.is_dir():
        raise DataError(
            f"{mat_dir} is not a folder. Fix: svhn-jax download --dir {mat_dir} && "
            f"svhn-jax prepare --mat-dir {mat_dir} --data-dir {data_dir}")
    absent = [OFFICIAL[s][0] for s in splits if not (mat_dir / OFFICIAL[s][0]).is_file()]
    if absent:
        extra = " --extra" if "extra" in splits else ""
        raise DataError(
            f"{mat_dir} lacks {', '.join(absent)}. Fix: svhn-jax download --dir "
            f"{mat_dir}{extra} && svhn-jax prepare --mat-dir {mat_dir} --data-dir "
            f"{data_dir}{extra}")
    if verify:
        for s in splits:
            verify_file(mat_dir / OFFICIAL[s][0], s)

    import tensorflow_datasets as tfds  # slow import: only here

    from .tfds_builder import SvhnCroppedNoTF

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        builder = SvhnCroppedNoTF(data_dir=str(data_dir), splits=tuple(splits))
        with tempfile.TemporaryDirectory(prefix="svhn_jax_tfds_") as scratch:
            builder.download_and_prepare(  # nothing is downloaded: scratch stays empty
                download_dir=scratch,
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(manual_dir=str(mat_dir)),
            )
    except DataError:
        raise
    except OSError as e:
        raise DataError(
            f"Cannot write the prepared dataset to {data_dir} ({type(e).__name__}: "
            f"{e}). Fix: pick a writable --data-dir with about 300 MB free.") from None
    return data_dir


def ensure_available(spec: str, data_dir: str | os.PathLike | None, *, download: bool,
                     mat_dir: str | os.PathLike | None = None, verify: bool = True,
                     extra: bool = False) -> Path | None:
    """Make sure `load(spec, data_dir=..., extra=extra)` will find its data.

    Only acts for spec == "svhn" when the dataset is not prepared in `data_dir`
    with train, test (and, with `extra`, extra): if `mat_dir` already holds
    their `.mat` files they are prepared (no network); else, with `download`,
    the files are downloaded into `mat_dir` (default
    `<data_dir>/downloads/svhn_mat`) and prepared; else DataError with the
    exact fix. Never touches the network unless `download` is True.
    `verify=False` skips the checksum of local `.mat` files (custom files);
    downloaded files are always verified.

    Returns: the data dir for "svhn", None for other specs.
    """
    if spec != "svhn":
        return None
    data_dir = default_data_dir(data_dir)
    splits = ("train", "test", "extra") if extra else ("train", "test")
    have = prepared_splits(data_dir)
    missing = [s for s in splits if s not in have]
    if not missing:
        return data_dir
    if have:  # a prepared dataset is never extended: say so before any download
        raise _already_prepared(data_dir, have, missing, mat_dir)
    if mat_dir is not None:
        mat_dir = Path(mat_dir).expanduser()
        if all((mat_dir / OFFICIAL[s][0]).is_file() for s in splits) and not download:
            return prepare(mat_dir, data_dir, splits=splits, verify=verify)
    if not download:
        raise DataError(_not_prepared_message(data_dir))
    mat_dir = mat_dir if mat_dir is not None else data_dir / "downloads" / "svhn_mat"
    download_files(mat_dir, splits)
    return prepare(mat_dir, data_dir, splits=splits)


def _cache_key(data_dir: Path) -> str:
    """Digest of dataset_info.json: a new preparation invalidates the cache."""
    return hashlib.sha256(_info_path(data_dir).read_bytes()).hexdigest()[:12]


def _decode_split(data_dir: Path, split: str, X: np.ndarray, y: np.ndarray,
                  chunk: int = 8192) -> None:
    """Decode one prepared split through `tfds.data_source` into X (n, 32, 32, 3), y (n,).

    tfds shuffles records when it writes them; each record's id
    ("train_000123") says which row it is, so it is decoded straight into
    that row: no reordering copy, which matters for `extra` (1.9 GB of pixels).
    """
    import tensorflow_datasets as tfds

    n = len(y)
    fix = (f"Fix: delete {dataset_dir(data_dir)} and prepare again: svhn-jax prepare "
           f"--mat-dir D --data-dir {data_dir}")
    try:
        ds = tfds.data_source(TFDS_NAME, split=split, data_dir=str(data_dir),
                              download=False)
        if len(ds) != n:
            raise DataError(f"{dataset_dir(data_dir)}: split {split} holds {len(ds)} "
                            f"records, dataset_info.json says {n}. {fix}")
        seen = np.zeros(n, bool)
        for start in range(0, n, chunk):
            keys = list(range(start, min(start + chunk, n)))
            for ex in ds.__getitems__(keys):
                ident = ex.get("id", b"")
                ident = ident.decode() if isinstance(ident, bytes) else str(ident)
                row = ident.rsplit("_", 1)[-1]
                if not (row.isdigit() and int(row) < n and not seen[int(row)]):
                    raise DataError(
                        f"{dataset_dir(data_dir)}: split {split} holds a record with "
                        f"id {ident!r}, not one of {split}_000000..{n - 1:06d} (each "
                        f"once). {fix}")
                k = int(row)
                seen[k] = True
                X[k] = ex["image"]
                y[k] = ex["label"]
    except DataError:
        raise
    except Exception as e:  # corrupt array_record files, bad features, ...
        raise DataError(f"Cannot read split {split} of {dataset_dir(data_dir)} "
                        f"({type(e).__name__}: {e}). {fix}") from None
    validate_arrays(X, y, f"{dataset_dir(data_dir)} ({split})")


def load_prepared(data_dir: str | os.PathLike | None = None, *, extra: bool = False):
    """{"train": (X, y), "test": (X, y)} of the prepared dataset, X uint8 (N, 32, 32, 3).

    With `extra`, "train" holds the train images followed by the extra ones,
    written into one array as they are read: no concatenation copy. The first load decodes the PNGs and caches `.npy`
    files per split in `<data_dir>/svhn_cropped/3.1.0/svhn_jax_cache/`
    (skipped where that is not writable); later loads read the cache.

    Raises: DataError (not prepared, split missing, corrupt), with the fix.
    """
    data_dir = default_data_dir(data_dir)
    sizes, parts = _parts(data_dir, extra)
    folder, key = dataset_dir(data_dir) / CACHE_DIRNAME, _cache_key(data_dir)
    out = {}
    for name, splits in parts.items():
        n = sum(sizes[s] for s in splits)
        X, y = empty_aligned((n,) + IMAGE_SHAPE, np.uint8), np.empty(n, np.int32)
        start = 0
        for s in splits:
            rows = slice(start, start + sizes[s])
            if not read_cache(folder, s, key, X[rows], y[rows]):
                _decode_split(data_dir, s, X[rows], y[rows])
                write_cache(folder, s, key, X[rows], y[rows])
            start = rows.stop
        out[name] = (X, y)
    return out


def _parts(data_dir: Path, extra: bool) -> tuple[dict, dict]:
    """({split: size}, {"train": splits it is made of, "test": ("test",)}), or
    DataError when the dataset or one of those splits is not prepared."""
    if not _info_path(data_dir).is_file():  # before importing tfds: fast and clear
        raise DataError(_not_prepared_message(data_dir))
    sizes = prepared_splits(data_dir)
    parts = {"train": ("train", "extra") if extra else ("train",), "test": ("test",)}
    missing = [s for p in parts.values() for s in p if s not in sizes]
    if missing:
        raise _already_prepared(data_dir, sizes, missing, None)
    return sizes, parts


def open_prepared(data_dir: str | os.PathLike | None = None, *, extra: bool = False) -> dict:
    """`load_prepared`'s {"train", "test"} as `Rows` whose images are read from the
    memory-mapped decoded-array cache: taking some rows reads only those.

    Where the cache is missing it is made first (`load_prepared` decodes and
    writes it); where it cannot be written, the splits stay loaded whole.
    """
    data_dir = default_data_dir(data_dir)
    opened = _open_cache(data_dir, extra)
    if opened is None:
        loaded = load_prepared(data_dir, extra=extra)
        opened = _open_cache(data_dir, extra)
        if opened is None:
            return {k: Rows(y, X.__getitem__) for k, (X, y) in loaded.items()}
    return opened


def _open_cache(data_dir: Path, extra: bool) -> dict | None:
    """{"train", "test"}: Rows over the memory-mapped cache files; None when a file is
    missing, unreadable, of another shape, or holds labels outside 0..9."""
    sizes, parts = _parts(data_dir, extra)
    folder, key = dataset_dir(data_dir) / CACHE_DIRNAME, _cache_key(data_dir)
    out = {}
    for name, splits in parts.items():
        maps, labels = [], []
        for split in splits:
            px, py = cache_paths(folder, split, key)
            try:
                X, y = np.load(px, mmap_mode="r"), np.load(py)
            except (OSError, ValueError):
                return None
            if X.shape != (sizes[split],) + IMAGE_SHAPE or X.dtype != np.uint8 \
                    or y.shape != (sizes[split],) or y.dtype != np.int32 \
                    or not (y.min() >= 0 and y.max() < 10):
                return None
            maps.append(X)
            labels.append(y)
        out[name] = Rows(np.concatenate(labels), partial(_take_rows, tuple(maps)))
    return out


def _take_rows(maps: tuple, idx) -> np.ndarray:
    """Rows idx of the concatenation of the arrays `maps`: uint8 (len(idx), 32, 32, 3)."""
    idx = np.asarray(idx, np.int64)
    out = np.empty((len(idx),) + IMAGE_SHAPE, np.uint8)
    start = 0
    for X in maps:
        inside = (idx >= start) & (idx < start + len(X))
        out[inside] = X[idx[inside] - start]
        start += len(X)
    return out

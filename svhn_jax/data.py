"""SVHN data: download, prepare (tensorflow-datasets, no TensorFlow), load, validate, split.

Every loader returns a dict of split name -> (X, y) with

    X: uint8 (N, 32, 32, 3)  RGB pixels, N >= 1
    y: int32 (N,)            digits 0..9 (the official label 10 is digit 0)

Data sources accepted by `load(spec)`:

    "svhn"          the tensorflow-datasets `svhn_cropped` 3.1.0 dataset, prepared
                    in array_record format (see `prepare`); returns "train", "test".
                    Decoded arrays are cached as .npy beside the data.
    DIR             a folder holding the official train_32x32.mat and test_32x32.mat;
                    returns "train", "test".
    FILE.npz        arrays X uint8 (N, 32, 32, 3) and y int 0..9; returns "all".
    "synthetic"     random SVHN-shaped data (`synthetic`); returns "all".

Functions here never import tensorflow_datasets or scipy at module import time,
so a missing-data error comes back fast. Every user-facing failure raises
`DataError` (exit 3), `DownloadError` (exit 4) or `SvhnJaxError` (exit 2), each
saying what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from svhn_jax import atomic
from svhn_jax.errors import DataError, DownloadError, SvhnJaxError

BASE_URL = "http://ufldl.stanford.edu/housenumbers/"

# split -> (file name, size in bytes, sha256); from the stock tfds builder's checksums.tsv
OFFICIAL: dict[str, tuple[str, int, str]] = {
    "train": ("train_32x32.mat", 182_040_794,
              "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8"),
    "test": ("test_32x32.mat", 64_275_384,
             "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b"),
    "extra": ("extra_32x32.mat", 1_329_278_602,
              "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3"),
}

TFDS_NAME = "svhn_cropped"
TFDS_VERSION = "3.1.0"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CACHE_DIRNAME = "svhn_jax_cache"
EIGHT_K_SLICE = "../shared/data/svhn_test_8k.npz"

_CHUNK = 1 << 20  # bytes per read when hashing / downloading


# --------------------------------------------------------------------------- paths

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
        f"Offline, use the real 8k slice: --data {EIGHT_K_SLICE}")


# --------------------------------------------------------------------- download

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _official(split: str) -> tuple[str, int, str]:
    if split not in OFFICIAL:
        raise SvhnJaxError(
            f"Unknown SVHN split {split!r}. Fix: use one of {', '.join(OFFICIAL)}.")
    return OFFICIAL[split]


def verify_file(path: str | os.PathLike, split: str) -> Path:
    """Check `path` against the official size, then sha256, of `split`'s file.

    Raises:
      DataError: the file does not exist.
      DownloadError: wrong size or checksum (names the file, expected vs got, fix).
    """
    path = Path(path)
    name, size, sha = _official(split)
    fix = (f"Fix: delete {path} and download it again (svhn-jax download --dir "
           f"{path.parent}), or, for a file you made yourself, pass --no-verify.")
    if not path.is_file():
        raise DataError(f"{path} does not exist. Fix: svhn-jax download --dir {path.parent}")
    got_size = path.stat().st_size
    if got_size != size:
        raise DownloadError(
            f"{path} is not the official {name}: expected {size} bytes, got "
            f"{got_size}. {fix}")
    got_sha = sha256_file(path)
    if got_sha != sha:
        raise DownloadError(
            f"{path} is not the official {name}: expected sha256 {sha}, got "
            f"{got_sha}. {fix}")
    return path


def _progress(name: str, done: int, total: int, t0: float, start: int) -> None:
    rate = (done - start) / max(time.monotonic() - t0, 1e-6) / 1e6
    sys.stderr.write(f"\r{name}: {100 * done / max(total, 1):5.1f}% "
                     f"{done / 1e6:7.1f}/{total / 1e6:.1f} MB  {rate:5.1f} MB/s ")
    sys.stderr.flush()


def _fetch(url: str, part: Path, size: int, timeout: float, progress: bool) -> None:
    """Fetch `url` into `part`, resuming from its current length with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a prefix of the right file: start over
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": "svhn-jax"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(
            f"Download of {url} failed: HTTP {e.code} {e.reason}. Fix: check the URL "
            f"in a browser; if the host moved, download the .mat files by hand into "
            f"{part.parent} and run svhn-jax prepare --mat-dir {part.parent} "
            f"--data-dir DATA_DIR") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"Cannot reach {url} ({reason}; one attempt, timeout {timeout:g} s). "
            f"Fix: check your network or proxy (http_proxy), then rerun; or download "
            f"the .mat files by hand into {part.parent} and run svhn-jax prepare "
            f"--mat-dir {part.parent} --data-dir DATA_DIR; offline, use the real 8k "
            f"slice: --data {EIGHT_K_SLICE}") from None
    show = progress and sys.stderr.isatty()
    with resp:
        if have and resp.status != 206:  # server ignored the Range header
            have = 0
        mode = "ab" if have else "wb"
        done, t0, start = have, time.monotonic(), have
        try:
            with open(part, mode) as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if show:
                        _progress(part.name[:-5], done, size, t0, start)
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, short reads
            raise DownloadError(
                f"Download of {url} was interrupted after {done} of {size} bytes "
                f"({type(e).__name__}: {e}); the partial file {part} is kept. Fix: "
                f"rerun the same command to resume.") from None
        finally:
            if show:
                sys.stderr.write("\n")


def download(dest_dir: str | os.PathLike, splits: Sequence[str] = ("train", "test"), *,
             timeout: float = 10.0, progress: bool = True) -> dict[str, Path]:
    """Download the official `.mat` files of `splits` from `BASE_URL` into `dest_dir`.

    Files already present and verified are skipped; a partial `NAME.part` is
    resumed with an HTTP Range request; every file is checked (size, sha256)
    before it is renamed into place atomically. One attempt per file with a
    socket timeout of `timeout` seconds: an unreachable host fails fast.
    The progress bar goes to stderr, only when `progress` and stderr is a tty.

    Returns: {split: path of the verified file}.
    Raises: DownloadError (network failure, HTTP error, checksum mismatch).
    """
    dest = Path(dest_dir).expanduser()
    for split in splits:
        _official(split)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create {dest} ({e}). Fix: choose a writable --dir.") from None
    out = {}
    for split in splits:
        name, size, sha = OFFICIAL[split]
        final, part = dest / name, dest / (name + ".part")
        if final.exists():  # never overwritten: a bad file is reported, not replaced
            out[split] = verify_file(final, split)
            continue
        url = BASE_URL + name
        _fetch(url, part, size, timeout, progress)
        got_size = part.stat().st_size
        if got_size < size:
            raise DownloadError(
                f"Download of {url} stopped early: {got_size} of {size} bytes; the "
                f"partial file {part} is kept. Fix: rerun the same command to resume.")
        got_sha = sha256_file(part) if got_size == size else "(not computed)"
        if got_sha != sha:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"The file downloaded from {url} is not the official {name}: expected "
                f"{size} bytes with sha256 {sha}, got {got_size} bytes with sha256 "
                f"{got_sha}. The bad download was deleted. Fix: rerun to download it "
                f"again; if it keeps failing the host serves another file: fetch it "
                f"by hand and run svhn-jax prepare --mat-dir {dest} --no-verify ...")
        os.replace(part, final)
        out[split] = final
    return out


# ---------------------------------------------------------------------- prepare

def prepare(mat_dir: str | os.PathLike, data_dir: str | os.PathLike | None, *,
            splits: Sequence[str] = ("train", "test"), verify: bool = True) -> Path:
    """Build tfds `svhn_cropped` 3.1.0 (array_record) in `data_dir` from `.mat` files.

    Uses `svhn_jax.tfds_builder.SvhnCroppedNoTF`: no TensorFlow, no network.
    `mat_dir` must hold `<split>_32x32.mat` for every split in `splits`
    (`extra` is optional). With `verify`, each file is checked against the
    official size and sha256 first (pass verify=False for custom files).
    Does nothing when the dataset is already prepared with these splits.

    Returns: the data dir (pass it to `load("svhn", data_dir=...)`).
    """
    mat_dir = Path(mat_dir).expanduser()
    data_dir = default_data_dir(data_dir)
    for split in splits:
        _official(split)
    if not splits:
        raise SvhnJaxError("prepare needs at least one split. Fix: --splits train,test")
    have = prepared_splits(data_dir)
    if have:
        missing = [s for s in splits if s not in have]
        if not missing:
            return data_dir
        raise DataError(
            f"{dataset_dir(data_dir)} is already prepared with splits {sorted(have)}, "
            f"without {missing}. Fix: delete {dataset_dir(data_dir)} and run svhn-jax "
            f"prepare --mat-dir {mat_dir} --data-dir {data_dir} again with all the "
            f"splits you want.")
    if not mat_dir.is_dir():
        raise DataError(
            f"{mat_dir} is not a folder. Fix: svhn-jax download --dir {mat_dir} && "
            f"svhn-jax prepare --mat-dir {mat_dir} --data-dir {data_dir}")
    absent = [OFFICIAL[s][0] for s in splits if not (mat_dir / OFFICIAL[s][0]).is_file()]
    if absent:
        raise DataError(
            f"{mat_dir} lacks {', '.join(absent)}. Fix: svhn-jax download --dir "
            f"{mat_dir} && svhn-jax prepare --mat-dir {mat_dir} --data-dir {data_dir}")
    if verify:
        for s in splits:
            verify_file(mat_dir / OFFICIAL[s][0], s)

    import tensorflow_datasets as tfds  # slow import: only here

    from svhn_jax.tfds_builder import SvhnCroppedNoTF

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
                     mat_dir: str | os.PathLike | None = None,
                     verify: bool = True) -> Path | None:
    """Make sure `load(spec, data_dir=...)` will find its data.

    Only acts for spec == "svhn" when the dataset is not prepared in `data_dir`:
    if `mat_dir` already holds train/test `.mat` files they are prepared (no
    network); else, with `download`, the files are downloaded into `mat_dir`
    (default `<data_dir>/downloads/svhn_mat`) and prepared; else DataError with
    the exact fix. Never touches the network unless `download` is True.
    `verify=False` skips the checksum of local `.mat` files (custom files);
    downloaded files are always verified.

    Returns: the data dir for "svhn", None for other specs.
    """
    if spec != "svhn":
        return None
    data_dir = default_data_dir(data_dir)
    have = prepared_splits(data_dir)
    if "train" in have and "test" in have:
        return data_dir
    splits = ("train", "test")
    if mat_dir is not None:
        mat_dir = Path(mat_dir).expanduser()
        if all((mat_dir / OFFICIAL[s][0]).is_file() for s in splits) and not download:
            return prepare(mat_dir, data_dir, splits=splits, verify=verify)
    if not download:
        raise DataError(_not_prepared_message(data_dir))
    mat_dir = mat_dir if mat_dir is not None else data_dir / "downloads" / "svhn_mat"
    _download(mat_dir, splits)  # the module function (the flag shadows its name)
    return prepare(mat_dir, data_dir, splits=splits)


_download = download


# ------------------------------------------------------------------------- load

def validate_arrays(X, y, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one (X, y) pair; return X uint8 (N, 32, 32, 3), y int32 (N,).

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
    return X, y.astype(np.int32)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random SVHN-shaped data: X uint8 (n, 32, 32, 3), y int32 (n,) in 0..9.

    Each class has its own random template (values 0..127); an image is its
    class template plus noise 0..127, so the data is learnable but not
    trivially. The noise of an image is the XOR of three rows drawn from three
    banks of 1024 random images (10^9 combinations), which is ~10x faster than
    drawing 3072 fresh random bytes per image: n=73,257 takes about 0.2 s.
    Deterministic per seed.
    """
    n = int(n)
    if n < 1:
        raise SvhnJaxError(f"synthetic data needs n >= 1 images, got {n}.")
    d = 32 * 32 * 3
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int32)
    templates = rng.integers(0, 128, size=(NUM_CLASSES, d), dtype=np.uint8)
    bank = 1024
    banks = np.frombuffer(rng.bytes(3 * bank * d), np.uint8).reshape(3, bank, d)
    pick = rng.integers(0, bank, size=(3, n))
    X = np.empty((n, d), np.uint8)
    chunk = 1024
    tmp = np.empty((chunk, d), np.uint8)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        out, t = X[s:e], tmp[: e - s]
        np.take(banks[0], pick[0, s:e], axis=0, out=out)
        for b in (1, 2):
            np.take(banks[b], pick[b, s:e], axis=0, out=t)
            out ^= t
        out >>= 1
        np.take(templates, y[s:e], axis=0, out=t)
        out += t
    return X.reshape((n,) + IMAGE_SHAPE), y


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
    X = np.ascontiguousarray(np.moveaxis(X, -1, 0))
    return validate_arrays(X, y, str(path))


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


def _cache_paths(data_dir: Path, split: str) -> tuple[Path, Path]:
    """Cache files for one split, keyed by a hash of dataset_info.json."""
    key = hashlib.sha256(_info_path(data_dir).read_bytes()).hexdigest()[:12]
    d = dataset_dir(data_dir) / CACHE_DIRNAME
    return d / f"{split}.{key}.X.npy", d / f"{split}.{key}.y.npy"


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    atomic.write_with(path, lambda f: np.save(f, arr))


def _write_cache(data_dir: Path, split: str, X: np.ndarray, y: np.ndarray) -> None:
    """Cache decoded arrays; silently does nothing where the folder is not writable."""
    try:
        px, py = _cache_paths(data_dir, split)
        px.parent.mkdir(exist_ok=True)
        for old in px.parent.glob(f"{split}.*.npy"):  # stale caches of an older preparation
            if old not in (px, py):
                old.unlink(missing_ok=True)
        _save_npy_atomic(py, y)
        _save_npy_atomic(px, X)
    except OSError:
        pass


def _read_cache(data_dir: Path, split: str, n: int):
    try:
        px, py = _cache_paths(data_dir, split)
        if not (px.is_file() and py.is_file()):
            return None
        X, y = np.load(px, allow_pickle=False), np.load(py, allow_pickle=False)
        X, y = validate_arrays(X, y, str(px))
        return (X, y) if X.shape[0] == n else None
    except (OSError, ValueError):  # unreadable or invalid cache: decode again
        return None


def _decode_split(data_dir: Path, split: str, n: int, chunk: int = 8192):
    """Decode one prepared split through `tfds.data_source`, in the official order."""
    import tensorflow_datasets as tfds

    fix = (f"Fix: delete {dataset_dir(data_dir)} and prepare again: svhn-jax prepare "
           f"--mat-dir D --data-dir {data_dir}")
    try:
        ds = tfds.data_source(TFDS_NAME, split=split, data_dir=str(data_dir),
                              download=False)
        if len(ds) != n:
            raise DataError(f"{dataset_dir(data_dir)}: split {split} holds {len(ds)} "
                            f"records, dataset_info.json says {n}. {fix}")
        X = np.empty((n,) + IMAGE_SHAPE, np.uint8)
        y = np.empty(n, np.int32)
        ids = np.full(n, -1, np.int64)
        for start in range(0, n, chunk):
            keys = list(range(start, min(start + chunk, n)))
            for k, ex in zip(keys, ds.__getitems__(keys)):
                X[k] = ex["image"]
                y[k] = ex["label"]
                ident = ex.get("id", b"")
                ident = ident.decode() if isinstance(ident, bytes) else str(ident)
                try:
                    ids[k] = int(ident.rsplit("_", 1)[1])
                except (IndexError, ValueError):
                    pass
        # tfds shuffles records on write; the ids "train_000123" restore the official order
        if np.array_equal(np.sort(ids), np.arange(n)):
            order = np.argsort(ids)
            X, y = X[order], y[order]
    except DataError:
        raise
    except Exception as e:  # corrupt array_record files, bad features, ...
        raise DataError(f"Cannot read split {split} of {dataset_dir(data_dir)} "
                        f"({type(e).__name__}: {e}). {fix}") from None
    return validate_arrays(X, y, f"{dataset_dir(data_dir)} ({split})")


def _load_tfds(data_dir, splits=("train", "test")):
    data_dir = default_data_dir(data_dir)
    if not _info_path(data_dir).is_file():  # before importing tfds: fast and clear
        raise DataError(_not_prepared_message(data_dir))
    sizes = prepared_splits(data_dir)
    missing = [s for s in splits if s not in sizes]
    if missing:
        raise DataError(
            f"{dataset_dir(data_dir)} is prepared without split(s) {missing} (it has "
            f"{sorted(sizes)}). Fix: delete {dataset_dir(data_dir)} and run svhn-jax "
            f"prepare --mat-dir D --data-dir {data_dir}")
    out = {}
    for s in splits:
        cached = _read_cache(data_dir, s, sizes[s])
        if cached is None:
            cached = _decode_split(data_dir, s, sizes[s])
            _write_cache(data_dir, s, *cached)
        out[s] = cached
    return out


def load(spec: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
         synthetic_n: int = 10_000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load a dataset: {split: (X uint8 (N, 32, 32, 3), y int32 (N,) in 0..9)}.

    spec:
      "svhn"       prepared tfds `svhn_cropped` in `data_dir` (argument, else
                   $TFDS_DATA_DIR, else ~/tensorflow_datasets) -> "train", "test".
                   The first load decodes PNGs (~20 s for all of SVHN) and caches
                   .npy files in `<data_dir>/svhn_cropped/3.1.0/svhn_jax_cache/`
                   (skipped if not writable); later loads take about a second.
      folder       holding train_32x32.mat and test_32x32.mat -> "train", "test".
      FILE.npz     arrays X (N, 32, 32, 3) uint8 and y 0..9 -> "all" (no cache written).
      "synthetic"  `synthetic(synthetic_n, seed)` -> "all".
    Keywords win over paths: use "./svhn" for a folder named svhn.

    Raises: DataError (missing/corrupt/invalid data, each with the fix).
    """
    if isinstance(spec, str) and spec == "svhn":
        return _load_tfds(data_dir)
    if isinstance(spec, str) and spec == "synthetic":
        return {"all": synthetic(synthetic_n, seed)}
    path = Path(spec).expanduser()
    accepted = ("Accepted: 'svhn' (prepared tensorflow-datasets svhn_cropped), "
                "'synthetic', a folder holding train_32x32.mat and test_32x32.mat, "
                f"or a .npz file with X and y (e.g. {EIGHT_K_SLICE}).")
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


# ----------------------------------------------------------------------- splits

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

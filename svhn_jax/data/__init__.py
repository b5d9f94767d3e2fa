"""SVHN data: download, prepare (tensorflow-datasets, no TensorFlow), load, validate, split.

Every loader returns a dict of split name -> (X, y) with

    X: uint8 (N, 32, 32, 3)  RGB pixels, C-contiguous (X.reshape(N, -1) is a view)
    y: int32 (N,)            digits 0..9 (the official label 10 is digit 0)

Modules, in the order data flows:
    hints         what to suggest to a user without data (only what exists here)
    arrays        the (X, y) contract (`validate_arrays`) and the `.mat` reader
    fetch         the official `.mat` files: URLs, checksums, resumable `download`
    tfds_builder  the TensorFlow-free tensorflow-datasets builder (imported lazily)
    cache         decoded arrays kept as `.npy`
    prepared      the prepared tfds dataset: `prepare`, `ensure_available`, decoding
    sources       `load(spec)` for "svhn", a `.mat` folder, a `.npz` file, "synthetic";
                  `open_rows(spec)`, the same read only in the rows asked for
    splits        `stratified_split`
    fingerprint   one uint64 per image, to find training images among test images
    preprocess    `fit` / `apply` (NumPy) and `apply_device` (JAX, inside a step)

Nothing here imports JAX, tensorflow_datasets or scipy at import time, so the
command line reports missing data before paying for them. Every user-facing
failure raises `DataError` (exit 3), `DownloadError` (exit 4) or `SvhnJaxError`
(exit 2), each saying what is wrong and what to do.
"""

from . import preprocess
from .arrays import IMAGE_SHAPE, NUM_CLASSES, Rows, read_mat, validate_arrays
from .fetch import OFFICIAL, download, sha256_file, verify_file
from .fingerprint import count_overlap, fingerprint_digest, image_fingerprints
from .hints import EIGHT_K_SLICE, offline_options
from .prepared import (
    CACHE_DIRNAME,
    TFDS_NAME,
    TFDS_VERSION,
    dataset_dir,
    default_data_dir,
    ensure_available,
    prepare,
    prepared_splits,
)
from .sources import load, open_rows, synthetic
from .splits import stratified_split

__all__ = [
    "IMAGE_SHAPE", "NUM_CLASSES", "Rows", "read_mat", "validate_arrays",
    "OFFICIAL", "download", "sha256_file", "verify_file",
    "count_overlap", "fingerprint_digest", "image_fingerprints",
    "EIGHT_K_SLICE", "offline_options",
    "CACHE_DIRNAME", "TFDS_NAME", "TFDS_VERSION", "dataset_dir", "default_data_dir",
    "ensure_available", "prepare", "prepared_splits",
    "load", "open_rows", "synthetic", "stratified_split", "preprocess",
]

"""Image fingerprints: find the same image in two datasets, whatever their order.

    train_fp = image_fingerprints(X_train)              # uint64 (N,), one per image
    count_overlap(image_fingerprints(X_eval), train_fp) # how many eval images were trained on

A fingerprint is the first 8 bytes of the BLAKE2b digest of an image's 3072
pixel bytes (height, width, channel order), read as a little-endian uint64.
Equal images have equal fingerprints; two different images collide with
probability 2^-64 per pair, so among a million images the chance of any
false match is below 10^-7. Labels play no part: the same picture under another
label still counts as seen.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import SvhnJaxError

__all__ = ["image_fingerprints", "count_overlap", "fingerprint_digest"]

_PIXELS = 32 * 32 * 3


def image_fingerprints(X) -> np.ndarray:
    """One uint64 per image.

    Args:
      X: uint8 images, (N, 32, 32, 3) or the same rows flattened to (N, 3072).

    Returns:
      uint64 (N,), row i the fingerprint of X[i]; the same for both layouts.
    """
    X = np.asarray(X)
    if X.dtype != np.uint8 or X.ndim < 2 or np.prod(X.shape[1:]) != _PIXELS:
        raise SvhnJaxError(
            f"image_fingerprints expects uint8 images (N, 32, 32, 3) or (N, 3072), got "
            f"{X.dtype} {X.shape}. Fix: pass the images as svhn_jax.data.load returns them.")
    rows = np.ascontiguousarray(X).reshape(X.shape[0], _PIXELS)
    blake = hashlib.blake2b
    digests = b"".join([blake(row, digest_size=8).digest() for row in rows])
    return np.frombuffer(digests, "<u8").astype(np.uint64)


def _check_fingerprints(fp, what: str) -> np.ndarray:
    fp = np.asarray(fp)
    if fp.ndim != 1 or fp.dtype != np.uint64:
        raise SvhnJaxError(f"{what} must be a 1-D uint64 array from image_fingerprints, "
                           f"got {fp.dtype} {fp.shape}.")
    return fp


def count_overlap(fingerprints, reference) -> int:
    """How many entries of `fingerprints` occur in `reference` (repeats counted).

    Args:
      fingerprints: uint64 (N,), e.g. of the images about to be scored.
      reference: uint64 (M,), e.g. of the training images.

    Returns:
      the number of i with fingerprints[i] in reference: 0 means no image of
      the first set is in the second.
    """
    a = _check_fingerprints(fingerprints, "fingerprints")
    b = _check_fingerprints(reference, "reference")
    return int(np.isin(a, b).sum())


def fingerprint_digest(fingerprints) -> str:
    """Hex sha256 of the sorted fingerprints: one id for a set of images, order ignored."""
    fp = np.sort(_check_fingerprints(fingerprints, "fingerprints"))
    return hashlib.sha256(fp.astype("<u8").tobytes()).hexdigest()

"""Tests for svhn_jax.data.fingerprint: the same image is found wherever it sits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from svhn_jax import data
from svhn_jax.errors import SvhnJaxError


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).integers(0, 256, size=(300, 32, 32, 3), dtype=np.uint8)


def test_fingerprint_is_blake2b_of_the_pixel_bytes(X):
    fp = data.image_fingerprints(X)
    assert fp.dtype == np.uint64 and fp.shape == (300,)
    for i in (0, 17, 299):  # independent reference: hashlib on the image's own bytes
        want = int.from_bytes(hashlib.blake2b(X[i].tobytes(), digest_size=8).digest(),
                              "little")
        assert int(fp[i]) == want
    np.testing.assert_array_equal(data.image_fingerprints(X.reshape(300, -1)), fp)
    np.testing.assert_array_equal(data.image_fingerprints(X[::3]), fp[::3])  # strided view


def test_identical_images_found_regardless_of_order(X):
    train = data.image_fingerprints(X)
    perm = np.random.default_rng(1).permutation(300)
    shuffled = data.image_fingerprints(X[perm])
    assert data.count_overlap(shuffled, train) == 300
    assert data.fingerprint_digest(shuffled) == data.fingerprint_digest(train)
    # a test set of 50 new images and 20 seen ones
    new = np.random.default_rng(2).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    test = data.image_fingerprints(np.concatenate([new, X[perm[:20]]]))
    assert data.count_overlap(test, train) == 20
    assert data.count_overlap(train, test) == 20
    assert data.count_overlap(test[:50], train) == 0


def test_a_changed_pixel_is_not_an_overlap(X):
    changed = X.copy()
    changed[7, 31, 0, 2] ^= 1  # one bit of one pixel of one image
    a, b = data.image_fingerprints(X), data.image_fingerprints(changed)
    assert data.count_overlap(b, a) == 299
    assert b[7] not in a and np.array_equal(np.delete(a, 7), np.delete(b, 7))
    assert data.fingerprint_digest(a) != data.fingerprint_digest(b)


def test_repeats_are_counted_and_distinct_images_do_not_collide(X):
    fp = data.image_fingerprints(X[[3, 3, 4]])
    assert data.count_overlap(fp, data.image_fingerprints(X[3:4])) == 2
    assert len(np.unique(data.image_fingerprints(X))) == 300  # distinct images, no collision


@pytest.mark.parametrize("bad", [np.zeros((2, 32, 32, 3), np.float32),
                                 np.zeros((2, 32, 32), np.uint8), np.zeros(5, np.uint8)],
                         ids=["float", "no-channels", "1-D"])
def test_bad_inputs_are_clear_errors(bad):
    with pytest.raises(SvhnJaxError, match=r"uint8 images \(N, 32, 32, 3\) or \(N, 3072\)"):
        data.image_fingerprints(bad)
    with pytest.raises(SvhnJaxError, match="1-D uint64 array from image_fingerprints"):
        data.count_overlap(np.arange(3), np.arange(3, dtype=np.uint64))

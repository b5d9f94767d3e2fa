"""`preprocess.apply_device` (jax.numpy, under jit) against the NumPy `preprocess.apply`.

Tolerance, stated once: |device - numpy| <= RTOL * |numpy| + ATOL_PX / scale, where
`scale` is what the mode divides by (127.5; the channel's std; the image's own std +
255 eps). Both versions compute (pixel - shift) / scale in float32 and differ only in
the order of float32 operations: the three products of the luminance, and the image
mode's sums over an image's D pixels (NumPy's einsum adds the 3072 squares one after
another, about sqrt(3072) * 2^-24 = 3e-6 relative). RTOL = 1e-5 covers the scale; the
shift gets 8 float32 ulps of 255 (2^-13) in pixel units, divided by the scale to give
output units. A wrong formula misses by orders of magnitude (see the negative test).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.data import preprocess as pp
from svhn_jax.errors import SvhnJaxError

RTOL = 1e-5
ATOL_PX = 2.0 ** -13

apply_jit = jax.jit(pp.apply_device, static_argnums=1)


@pytest.fixture(scope="module")
def images():
    """(train, X): a dark training part; random images plus the hard cases for `image`."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 120, size=(200, 32, 32, 3), dtype=np.uint8)
    train[..., 2] //= 2  # channels with different statistics
    X = rng.integers(0, 256, size=(160, 32, 32, 3), dtype=np.uint8)
    X[:8] = rng.integers(0, 256, size=(8, 1, 1, 1))              # constant images
    X[8:16] = rng.integers(0, 255, size=(8, 1, 1, 1))
    X[8:16, 5, 7, 1] += 1                                         # one pixel differs by 1
    X[16:32] = rng.integers(100, 103, size=(16, 32, 32, 3))       # low contrast
    X[32:48] = 255 * rng.integers(0, 2, size=(16, 32, 32, 3))     # black and white
    return train, X


def _scale(X, cfg) -> np.ndarray:
    """What each output was divided by, in float64, from the definition of the mode."""
    if cfg["mode"] == "scale":
        return np.float64(127.5)
    if cfg["mode"] == "channel":
        return np.tile(np.maximum(cfg["std"], cfg["eps"]), 1024)  # (h, w, c) order
    px = X.astype(np.float64)
    if cfg["grayscale"]:
        px = px @ np.asarray(pp.LUMA)
    px = px.reshape(len(X), -1)
    return px.std(axis=1, keepdims=True) + 255 * cfg["eps"]


def _excess(dev, host, scale) -> float:
    """max |dev - host| / allowed difference: <= 1 means within the tolerance."""
    allowed = RTOL * np.abs(host) + ATOL_PX / scale
    return float(np.max(np.abs(np.asarray(dev, np.float64) - host) / allowed))


@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("mode", [m for m in pp.MODES if m not in pp.LOCAL])  # LOCAL: test_preprocess_local.py
def test_device_equals_numpy(mode, grayscale, images):
    train, X = images
    cfg = pp.fit(train, mode=mode, grayscale=grayscale)
    host = pp.apply(X, cfg).astype(np.float64)
    prep = pp.device_prep(cfg)
    flat = apply_jit(jnp.asarray(X.reshape(len(X), -1)), prep)
    nhwc = apply_jit(jnp.asarray(X), prep)
    assert flat.dtype == jnp.float32 and flat.shape == (len(X), pp.input_dim(cfg))
    np.testing.assert_array_equal(np.asarray(flat), np.asarray(nhwc))
    excess = _excess(flat, host, _scale(X, cfg))
    print(f"{mode} grayscale={grayscale}: max difference = {excess:.3f} of the tolerance")
    assert excess <= 1.0
    if mode == "image":  # a constant image is exactly 0, as in NumPy, not round-off / eps
        assert np.all(np.asarray(flat)[:8] == 0) and np.all(host[:8] == 0)


@pytest.mark.parametrize("mode, grayscale, wrong", [
    ("channel", False, lambda p: p._replace(mean=tuple(m + 0.01 for m in p.mean))),
    ("image", True, lambda p: p._replace(eps=2 * p.eps)),
    ("channel", False, lambda p: p._replace(inv_std=p.inv_std[::-1])),
], ids=["mean-off-by-0.01", "eps-doubled", "channels-swapped"])
def test_tolerance_catches_a_wrong_formula(mode, grayscale, wrong, images):
    train, X = images
    cfg = pp.fit(train, mode=mode, grayscale=grayscale)
    host = pp.apply(X, cfg).astype(np.float64)
    dev = np.asarray(apply_jit(jnp.asarray(X), wrong(pp.device_prep(cfg))))
    excess = _excess(dev, host, _scale(X, cfg))
    print(f"wrong formula: max difference = {excess:.3g} of the tolerance")
    assert excess > 10


def test_device_prep_is_static_and_survives_json(images):
    train, X = images
    for mode in pp.MODES:
        cfg = pp.fit(train, mode=mode, grayscale=True)
        prep = pp.device_prep(cfg)
        assert prep == pp.device_prep(json.loads(json.dumps(cfg)))
        assert hash(prep) == hash(pp.device_prep(json.loads(json.dumps(cfg))))
        xb = jnp.asarray(X[:4])
        np.testing.assert_array_equal(np.asarray(pp.apply_device(xb, cfg)),
                                      np.asarray(pp.apply_device(xb, prep)))


@pytest.mark.parametrize("bad", [
    np.zeros((2, 32, 32, 3), np.float32),
    np.zeros((2, 3072), np.int32),
    np.zeros((2, 1024), np.uint8),
    np.zeros((2, 32, 32), np.uint8),
    np.zeros((2, 3, 32, 32), np.uint8),
], ids=["float32", "int32", "gray-width", "no-channel-axis", "channels-first"])
def test_apply_device_rejects_what_is_not_uint8_images(bad, images):
    cfg = pp.fit(images[0], mode="scale")
    with pytest.raises(SvhnJaxError, match=r"uint8 images \(B, 32, 32, 3\) or \(B, 3072\)"):
        pp.apply_device(jnp.asarray(bad), cfg)
    with pytest.raises(SvhnJaxError, match="not a preprocessing config"):
        pp.device_prep({"grayscale": True})

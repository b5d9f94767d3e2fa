"""The "local" preprocessing mode (local contrast normalisation): NumPy `apply` and
`apply_device` against a float64 reference written here, and how the training step
shifts its output.

The reference does not use the separable form the package computes (G a G^T with
row-normalised 1-D Gaussians G): it weights every pixel pair of the image with the
2-D Gaussian exp(-|p - q|^2 / (2 sigma^2)), normalised over the pixels inside the
image. The two are equal in exact arithmetic, because the 2-D Gaussian factors and so
does the image's square window.

Tolerance, stated once: |got - reference| <= RTOL * |reference| + ATOL_PX / den, with
den the reference's divisor at that pixel (the local standard deviation or its floor).
Both package versions subtract a blurred float32 image from a float32 pixel, the
blur summing 32 x 32 weighted values of up to 255: ATOL_PX = 8 float32 ulps of 255
(2^-13) in pixel units covers that, divided by den to give output units. The
negative test shows a wrong formula missing by orders of magnitude.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.data import preprocess as pp
from svhn_jax.errors import SvhnJaxError
from svhn_jax.step import train

RTOL = 1e-5
ATOL_PX = 2.0 ** -13

apply_jit = jax.jit(pp.apply_device, static_argnums=1)


def reference(X, grayscale: bool, sigma: float, eps: float, local_mean=True, floor=True):
    """(output (N, D), its divisor (N, D)) in float64, from the definition; local_mean
    and floor False give the wrong formulas of the negative test."""
    px = X.astype(np.float64)
    if grayscale:
        px = (px @ np.asarray(pp.LUMA))[..., None]
    i = np.arange(32.0)
    d2 = (i[:, None] - i[None, :]) ** 2
    w = np.exp(-(d2[:, None, :, None] + d2[None, :, None, :]) / (2 * sigma ** 2))  # (i, j, p, q)
    w /= w.sum(axis=(2, 3), keepdims=True)
    gray = px.mean(axis=3)
    mean = np.einsum("ijpq,npq->nij", w, gray) if local_mean else gray.mean(axis=(1, 2), keepdims=True)
    v = px - mean[..., None]
    sd = np.sqrt(np.einsum("ijpq,npq->nij", w, (v * v).mean(axis=3)))
    image_floor = sd.mean(axis=(1, 2), keepdims=True) if floor else 0.0
    den = np.maximum(sd, np.maximum(image_floor, 255 * eps))
    c = px.shape[3]
    return (v / den[..., None]).reshape(len(X), -1), np.repeat(den.reshape(len(X), -1), c, axis=1)


@pytest.fixture(scope="module")
def images():
    """Random images plus the hard cases: constant, one pixel off, low contrast, black and white."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    X[:8] = rng.integers(0, 256, size=(8, 1, 1, 1))
    X[8:16] = rng.integers(0, 255, size=(8, 1, 1, 1))
    X[8:16, 5, 7, 1] += 1
    X[16:32] = rng.integers(100, 103, size=(16, 32, 32, 3))
    X[32:48] = 255 * rng.integers(0, 2, size=(16, 32, 32, 3))
    return X


def _excess(got, ref, den) -> float:
    """max |got - ref| / allowed difference: <= 1 means within the tolerance."""
    allowed = RTOL * np.abs(ref) + ATOL_PX / den
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref) / allowed))


@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb", "gray"])
def test_numpy_and_device_equal_the_reference(grayscale, images):
    cfg = pp.fit(images, mode="local", grayscale=grayscale)
    assert cfg["sigma"] == pp.LOCAL_SIGMA and pp.input_dim(cfg) == 32 * 32 * (1 if grayscale else 3)
    ref, den = reference(images, grayscale, cfg["sigma"], cfg["eps"])
    host = pp.apply(images, cfg)
    dev = apply_jit(jnp.asarray(images.reshape(len(images), -1)), pp.device_prep(cfg))
    for name, got in (("numpy", host), ("device", dev)):
        excess = _excess(got, ref, den)
        print(f"local grayscale={grayscale} {name}: max difference = {excess:.3f} of the tolerance")
        assert excess <= 1.0
    # a constant image is exactly 0, not the blur's round-off divided by the floor
    assert np.all(host[:8] == 0) and np.all(np.asarray(dev)[:8] == 0)


@pytest.mark.parametrize("wrong", ["sigma", "no-floor", "global-mean"])
def test_tolerance_catches_a_wrong_formula(wrong, images):
    cfg = pp.fit(images, mode="local", grayscale=True)
    ref, den = reference(images, True, cfg["sigma"], cfg["eps"])
    if wrong == "sigma":
        got = pp.apply(images, dict(cfg, sigma=cfg["sigma"] + 0.5))
    else:
        got, _ = reference(images, True, cfg["sigma"], cfg["eps"], local_mean=wrong != "global-mean",
                           floor=wrong != "no-floor")
    excess = _excess(got, ref, den)
    print(f"{wrong}: max difference = {excess:.3g} of the tolerance")
    assert excess > 10


def test_brightness_and_contrast_do_not_change_it(images):
    cfg = pp.fit(images, mode="local", grayscale=True)
    X = images[48:] // 4                      # room to brighten and to stretch in uint8
    base = pp.apply(X, cfg)
    np.testing.assert_allclose(pp.apply(X + 100, cfg), base, atol=1e-4)
    np.testing.assert_allclose(pp.apply(X * 3, cfg), base, atol=1e-4)
    assert np.abs(base).max() > 1           # and it is not all zeros


def test_the_step_shifts_the_normalised_images(images):
    """A local mode's pixels depend on their neighbours, so the step normalises, then
    shifts (zero-filled): the batch equals NumPy's output moved by the drawn offsets."""
    cfg = pp.fit(images, mode="local", grayscale=True)
    step_cfg = train.StepConfig(spec=(), batch=16, shift=2, prep=pp.device_prep(cfg), image_shape=(32, 32, 1))
    X = jnp.asarray(images.reshape(len(images), -1))
    y = jnp.zeros(len(images), jnp.int32)
    order = jnp.arange(len(images), dtype=jnp.int32)[::-1]
    key = jax.random.key(3)
    xb, _ = train.get_batch(X, y, order, 1, key, 7, step_cfg)
    rows = np.asarray(order[16:32])
    offsets = np.asarray(train._offsets(key, 7, 16, step_cfg)) - 2
    want = np.zeros((16, 32, 32))
    normalised = pp.apply(images[rows], cfg).reshape(16, 32, 32)
    for k, (dy, dx) in enumerate(offsets):   # output pixel p shows input pixel p + offset
        for r in range(32):
            for c in range(32):
                if 0 <= r + dy < 32 and 0 <= c + dx < 32:
                    want[k, r, c] = normalised[k, r + dy, c + dx]
    assert np.any(offsets != 0)
    np.testing.assert_allclose(np.asarray(xb).reshape(16, 32, 32), want, atol=1e-4)


def test_shifted_uint8_images_are_refused(images):
    cfg = pp.fit(images, mode="local", grayscale=True)
    x = jnp.asarray(images[:2].reshape(2, -1))
    with pytest.raises(SvhnJaxError, match="depends on each pixel's neighbours.*shift its output"):
        pp.apply_device(x, pp.device_prep(cfg), shifted=(x, jnp.ones((2, 1024), bool)))

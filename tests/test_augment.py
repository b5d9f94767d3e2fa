"""Affine distortions inside the step (data.augment, train.get_batch): the bilinear
warp pinned against NumPy written here, its composition with shifts, the random
draw, and the settings' errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax import config
from svhn_jax.data import augment, preprocess
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model
from svhn_jax.step import train

TOL = 1e-5   # float32 coordinates and weights against float64 NumPy, values of order 1


def _np_warp(img, A, t, disp=None):
    """img (H, W, C) resampled at q = A (p - c) + c + t (+ disp[:, p], disp (2, H, W)),
    bilinearly, zero outside: one pixel at a time, in float64."""
    h, w, _ = img.shape
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    out = np.zeros(img.shape)
    for r in range(h):
        for col in range(w):
            q = np.asarray(A, np.float64) @ (np.array([r, col]) - c) + c + t
            if disp is not None:
                q = q + disp[:, r, col]
            q0 = np.floor(q).astype(int)
            f = q - q0
            for i in (0, 1):
                for j in (0, 1):
                    rr, cc = q0[0] + i, q0[1] + j
                    if 0 <= rr < h and 0 <= cc < w:
                        out[r, col] += (f[0] if i else 1 - f[0]) * (f[1] if j else 1 - f[1]) * img[rr, cc]
    return out


def _warp(imgs, A, t, disp=None):
    """augment.warp on images (B, H, W, C) given as rows; disp (B, 2, H, W) or None."""
    b, h, w, _ = imgs.shape
    out = augment.warp(jnp.asarray(imgs.reshape(b, -1), jnp.float32), jnp.asarray(A, jnp.float32),
                       jnp.asarray(t, jnp.float32), imgs.shape[1:],
                       None if disp is None else jnp.asarray(disp.reshape(b, 2, h * w), jnp.float32))
    return np.asarray(out).reshape(imgs.shape)


def _images(b=3, h=5, w=5, c=2, seed=0):
    return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


def test_the_identity_gives_the_image_back_exactly():
    x = _images()
    assert np.array_equal(_warp(x, np.broadcast_to(np.eye(2), (3, 2, 2)), np.zeros((3, 2))), x)
    u = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 3)), jnp.float32)
    assert np.array_equal(np.asarray(augment.matrices(u, 0.0, 0.0, 0.0)), np.broadcast_to(np.eye(2), (3, 2, 2)))


def test_a_quarter_turn_is_rot90():
    x = _images()
    quarter = np.broadcast_to(np.array([[0.0, 1.0], [-1.0, 0.0]]), (3, 2, 2))   # out[i, j] = x[j, W-1-i]
    assert np.array_equal(_warp(x, quarter, np.zeros((3, 2))), np.rot90(x, axes=(1, 2)))
    u = jnp.asarray([[-1.0, 0.0, 0.0]] * 3)   # theta = -90 degrees, the drawn matrix (cos ~ 4e-8)
    np.testing.assert_allclose(_warp(x, augment.matrices(u, 90.0, 0.0, 0.0), np.zeros((3, 2))),
                               np.rot90(x, axes=(1, 2)), atol=TOL)


def test_a_zoom_and_a_half_pixel_shift_match_values_computed_by_hand():
    x = _images(b=1, h=4, w=4, c=1)
    a = x[0, :, :, 0]
    out = _warp(x, 0.5 * np.eye(2)[None], np.zeros((1, 2)))[0, :, :, 0]
    # zoom 2 about c = 1.5: pixel (0, 0) samples (0.75, 0.75)
    want = 0.0625 * a[0, 0] + 0.1875 * a[0, 1] + 0.1875 * a[1, 0] + 0.5625 * a[1, 1]
    assert out[0, 0] == pytest.approx(want, abs=TOL)
    # half a pixel up: row 0 samples row -0.5, half of it outside the image (0)
    out = _warp(x, np.eye(2)[None], np.array([[-0.5, 0.0]]))[0, :, :, 0]
    np.testing.assert_allclose(out[0], 0.5 * a[0], atol=TOL)
    np.testing.assert_allclose(out[1:], 0.5 * (a[:-1] + a[1:]), atol=TOL)


def test_random_distortions_match_numpy():
    x = _images(b=4, h=7, w=6, c=3, seed=2)
    u = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (4, 3)), jnp.float32)
    A = np.asarray(augment.matrices(u, 30.0, 0.3, 0.4))
    t = np.random.default_rng(4).uniform(-2, 2, (4, 2))
    got = _warp(x, A, t)
    for k in range(4):
        np.testing.assert_allclose(got[k], _np_warp(x[k].astype(np.float64), A[k], t[k]), atol=TOL)
    for k in range(4):   # the matrices: R(theta) Sh(s) / z
        th, z, s = np.deg2rad(30.0) * u[k, 0], 1 + 0.3 * u[k, 1], 0.4 * u[k, 2]
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        np.testing.assert_allclose(A[k], R @ np.array([[1, s], [0, 1]]) / z, atol=1e-6)


def test_elastic_displacements_match_numpy():
    noise = np.random.default_rng(5).uniform(-1, 1, (64, 2, 32, 32))
    field = np.asarray(augment.elastic_field(jnp.asarray(noise, jnp.float32))).reshape(noise.shape)
    k = np.arange(32)
    G = np.exp(-(k[:, None] - k[None, :]) ** 2 / (2 * 4.0 ** 2))
    G /= G.sum(axis=1, keepdims=True)
    g = np.exp(-np.arange(-12, 13) ** 2 / 32.0)
    want = G @ noise @ G.T / (np.sqrt(1 / 3) * np.sum((g / g.sum()) ** 2))
    np.testing.assert_allclose(field, want, atol=TOL)
    assert 0.9 < field[:, :, 8:24, 8:24].std() < 1.1   # about unit spread away from the border
    x = _images(b=2, h=6, w=7, c=3, seed=6)
    disp = 1.5 * np.random.default_rng(7).normal(size=(2, 2, 6, 7))
    A, t = np.broadcast_to(np.eye(2), (2, 2, 2)), np.array([[0.5, -1.0], [0.0, 0.0]])
    got = _warp(x, A, t, disp)
    for i in range(2):
        np.testing.assert_allclose(got[i], _np_warp(x[i].astype(np.float64), A[i], t[i], disp[i]), atol=TOL)


def test_translate_moves_whole_pixels_with_zeros_filled_in():
    x = _images(b=2, h=4, w=5, c=3)
    for dy, dx in augment.TTA_OFFSETS:
        want = np.roll(x, (dy, dx), axis=(1, 2))
        if dy > 0:
            want[:, :dy] = 0
        if dy < 0:
            want[:, dy:] = 0
        if dx > 0:
            want[:, :, :dx] = 0
        if dx < 0:
            want[:, :, dx:] = 0
        got = augment.translate(jnp.asarray(x.reshape(2, -1)), dy, dx, x.shape[1:])
        assert np.array_equal(np.asarray(got).reshape(x.shape), want), (dy, dx)


# ------------------------------------------------------------------ in the step

def _batch(cfg, step=5, seed=0, n=40):
    X = jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8))
    y = jnp.zeros(n, jnp.int32)
    order = train.epoch_order(jax.random.key(0), 0, n, cfg.batch)
    return train.get_batch(X, y, order, 1, jax.random.key(7), step, cfg)[0], X[order[cfg.batch:2 * cfg.batch]]


def _cfg(**kw):
    prep = preprocess.device_prep({"mode": "image", "grayscale": True, "channels": 1, "eps": 1e-6})
    return train.check_config(train.StepConfig(spec=model.make_spec((8,)), batch=16, prep=prep,
                                               image_shape=(32, 32, 1), **kw))


def test_with_distortions_at_zero_the_warp_is_the_steps_shift_bit_for_bit():
    shifted, _ = _batch(_cfg(shift=2))
    cfg = _cfg(shift=2, rotate=10.0)
    plain = train.features(_batch(cfg)[1], cfg.prep)
    unwarped = train._distort(plain, jax.random.key(7), 5, cfg._replace(rotate=0.0))
    assert np.array_equal(np.asarray(unwarped), np.asarray(shifted))


def test_the_draw_depends_on_the_key_and_step_only():
    cfg = _cfg(shift=1, rotate=15.0, scale=0.1, shear=0.2)
    a, x = _batch(cfg)
    assert np.array_equal(np.asarray(a), np.asarray(_batch(cfg)[0]))   # same seed, same result
    assert not np.array_equal(np.asarray(a), np.asarray(_batch(cfg, step=6)[0]))
    # each row is its own image's warp: the first 5 rows alone give the same values
    u = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 5), 5), (16, 3),
                           minval=-1.0, maxval=1.0)
    t = (train._offsets(jax.random.key(7), 5, 16, cfg) - 1).astype(jnp.float32)
    A = augment.matrices(u, 15.0, 0.1, 0.2)
    part = augment.warp(train.features(x[:5], cfg.prep), A[:5], t[:5], (32, 32, 1))
    np.testing.assert_array_equal(np.asarray(part), np.asarray(a[:5]))
    assert not np.array_equal(np.asarray(a), np.asarray(train.features(x, cfg.prep)))


def test_an_elastic_batch_is_its_key_and_steps_displacement_field():
    cfg = _cfg(shift=1, elastic=2.0)
    a, x = _batch(cfg)
    assert np.array_equal(np.asarray(a), np.asarray(_batch(cfg)[0]))   # same seed, same result
    noise = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 7), 5),
                               (16, 2, 32, 32), minval=-1.0, maxval=1.0)
    t = (train._offsets(jax.random.key(7), 5, 16, cfg) - 1).astype(jnp.float32)
    want = augment.warp(train.features(x, cfg.prep), jnp.broadcast_to(jnp.eye(2), (16, 2, 2)), t,
                        (32, 32, 1), 2.0 * augment.elastic_field(noise))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(want))
    assert not np.allclose(np.asarray(a), np.asarray(_batch(_cfg(shift=1))[0]), atol=1e-3)


@pytest.mark.parametrize("bad, message", [
    (dict(rotate=-1.0), "--rotate must be >= 0 and <= 45"),
    (dict(rotate=46.0), "--rotate must be >= 0 and <= 45"),
    (dict(scale=1.0), "--scale must be >= 0 and < 1"),
    (dict(shear=-0.1), "--shear must be >= 0 and < 1"),
    (dict(elastic=9.0), "--elastic must be >= 0 and <= 8"),
    (dict(elastic=-1.0), "--elastic must be >= 0 and <= 8"),
    (dict(tta=10), "--tta must be >= 1 and <= 9"),
    (dict(tta=0), "--tta must be >= 1 and <= 9"),
])
def test_bad_values_are_one_clear_error(bad, message):
    with pytest.raises(SvhnJaxError, match=message):
        config.make(**bad)
    if "tta" not in bad:   # the step's own check, for callers that build a StepConfig
        with pytest.raises(SvhnJaxError, match=message.removeprefix("--")):
            _cfg(**bad)


# ------------------------------------------------------------------ in a run

RUN = dict(data="synthetic", synthetic_n=300, hidden=(8,), batch=32, epochs=2, shift=1, lr=3e-3,
           rotate=10.0, scale=0.1, shear=0.2, elastic=1.0, tensorboard=False)
_SCRIPT = """
import json, sys
from svhn_jax import config
from svhn_jax.run import launch
launch.train_run(config.make(**json.loads(sys.argv[1]), devices="2"), sys.argv[2], quiet=True)
"""


def test_a_distorted_run_is_recorded_repeatable_and_the_same_on_2_devices(tmp_path):
    import compose_cases as cases
    from test_compose_devices import TOL as TOL_DEVICES, _rel
    from svhn_jax.run import folder, launch

    two = subprocess.Popen([sys.executable, "-c", _SCRIPT, json.dumps(RUN), str(tmp_path / "two")],
                           env=dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        one = [launch.train_run(config.make(**RUN, devices="1"), tmp_path / n, quiet=True)
               for n in ("one", "again")]
        _, err = two.communicate(timeout=300)
    finally:
        two.kill()
    assert two.returncode == 0, err
    assert one[0]["params_sha256"] == one[1]["params_sha256"]   # same seed, same result
    c, _ = folder.read_run(tmp_path / "two")
    assert (c.rotate, c.scale, c.shear, c.elastic, c.devices) == (10.0, 0.1, 0.2, 1.0, "2")   # config.json
    assert folder.read_metrics(tmp_path / "two")["mesh"] == {"models": 1, "data": 2}
    a, b = cases.state(tmp_path / "two"), cases.state(tmp_path / "one")
    assert _rel((a.params, a.bn_state), (b.params, b.bn_state)) <= TOL_DEVICES

"""Tests for svhn_jax.data.preprocess, NumPy side: statistics from the training part only.

The JAX side (`apply_device`) is tested in test_preprocess_device.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from svhn_jax.data import preprocess as pp
from svhn_jax.errors import SvhnJaxError


@pytest.fixture(scope="module")
def parts():
    """A dark, low-contrast 'train' part and a bright 'test' part with different colours."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 100, size=(300, 32, 32, 3)).astype(np.uint8)
    train[..., 2] //= 2  # blue darker than red/green
    test = rng.integers(150, 256, size=(40, 32, 32, 3)).astype(np.uint8)
    return train, test


def test_scale_mode_maps_to_minus_one_one():
    X = np.zeros((2, 32, 32, 3), np.uint8)
    X[1] = 255
    cfg = pp.fit(X, mode="scale")
    Z = pp.apply(X, cfg)
    assert Z.dtype == np.float32 and Z.shape == (2, 3072) == (2, pp.input_dim(cfg))
    assert np.all(Z[0] == -1.0) and np.all(Z[1] == 1.0)


def test_channel_stats_come_from_train_only(parts):
    train, test = parts
    cfg = pp.fit(train, mode="channel")
    px = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(cfg["mean"], px.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cfg["std"], px.std(0), rtol=1e-9)
    # training part: per-channel mean 0, std 1
    Z = pp.apply(train, cfg).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-4)
    # test part: the *train* statistics, so far from mean 0
    Zt = pp.apply(test, cfg).reshape(-1, 3)
    want = (test.reshape(-1, 3) - px.mean(0)) / px.std(0)
    np.testing.assert_allclose(Zt, want, rtol=1e-5, atol=1e-5)
    assert Zt.mean() > 2
    assert pp.fit(test, mode="channel")["mean"] != cfg["mean"]


def test_image_mode_standardises_each_image(parts):
    train, test = parts
    X = np.concatenate([train[:20], test[:20], np.full((1, 32, 32, 3), 77, np.uint8)])
    cfg = pp.fit(train, mode="image")
    Z = pp.apply(X, cfg).astype(np.float64)
    assert np.isfinite(Z).all()
    np.testing.assert_allclose(Z[:-1].mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(Z[:-1].std(1), 1, atol=1e-3)
    assert np.all(Z[-1] == 0)  # a constant image becomes zeros, not NaN
    # invariant to brightness shifts: the train statistics play no part
    np.testing.assert_allclose(pp.apply(X[:20] // 2 + 50, cfg), pp.apply(X[:20] // 2, cfg),
                               atol=1e-4)


@pytest.mark.parametrize("mode", pp.MODES)
def test_grayscale_is_luminance_with_1024_features(mode, parts):
    train, _ = parts
    cfg = pp.fit(train, mode=mode, grayscale=True)
    assert pp.input_dim(cfg) == 1024 and cfg["channels"] == 1
    Z = pp.apply(train[:5], cfg)
    assert Z.shape == (5, 1024) and Z.dtype == np.float32
    if mode == "scale":
        red = np.zeros((1, 32, 32, 3), np.uint8)
        red[..., 0] = 255
        np.testing.assert_allclose(pp.apply(red, cfg), 0.299 * 255 / 127.5 - 1, rtol=1e-6)
    if mode == "channel":
        lum = train.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        np.testing.assert_allclose(cfg["mean"], [lum.mean()], rtol=1e-6)


@pytest.mark.parametrize("mode", pp.MODES)
@pytest.mark.parametrize("grayscale", [False, True])
def test_config_round_trips_through_json(mode, grayscale, parts):
    train, test = parts
    cfg = pp.fit(train, mode=mode, grayscale=grayscale)
    back = json.loads(json.dumps(cfg))
    assert back == cfg
    np.testing.assert_array_equal(pp.apply(test, back), pp.apply(test, cfg))
    assert pp.input_dim(back) == pp.input_dim(cfg) == 32 * 32 * (1 if grayscale else 3)


@pytest.mark.parametrize("mode", pp.MODES)
def test_chunking_does_not_change_results(mode, parts, monkeypatch):
    train, _ = parts
    cfg = pp.fit(train, mode=mode)
    whole = pp.apply(train, cfg)
    monkeypatch.setattr(pp, "CHUNK", 7)
    np.testing.assert_array_equal(pp.apply(train, cfg), whole)
    small = pp.fit(train, mode=mode)  # statistics summed over chunks of 7 images
    assert small.keys() == cfg.keys()
    for key in ("mean", "std"):
        np.testing.assert_allclose(small.get(key, 0), cfg.get(key, 0), rtol=1e-12)


def test_bad_mode_lists_valid_modes(parts):
    with pytest.raises(SvhnJaxError, match="scale, channel, image") as e:
        pp.fit(parts[0], mode="zca")
    assert e.value.exit_code == 2
    with pytest.raises(SvhnJaxError, match="scale, channel, image"):
        pp.apply(parts[0], {"mode": "minmax"})
    with pytest.raises(SvhnJaxError, match="needs its 'mean' and 'std'"):
        pp.apply(parts[0], {"mode": "channel"})


def test_bad_images_rejected(parts):
    with pytest.raises(SvhnJaxError, match=r"uint8 images of shape \(N, 32, 32, 3\)"):
        pp.fit(parts[0].astype(np.float32), mode="scale")
    with pytest.raises(SvhnJaxError, match=r"got uint8 \(3, 32, 32\)"):
        pp.apply(parts[0][:3, ..., 0], pp.fit(parts[0], mode="scale"))


@pytest.mark.parametrize("grayscale", [False, True])
def test_statistics_summed_over_processes_equal_those_of_all_images(grayscale, parts):
    """Two processes, each with half of the training images, simulated in one: the
    second's sums are captured, then added to the first's by `sum_over`."""
    X = parts[0]
    k = len(X) // 3
    captured = {}

    def capture(a):
        captured["sums"] = a.copy()
        return a

    pp.fit(X[k:], mode="channel", grayscale=grayscale, sum_over=capture)
    split = pp.fit(X[:k], mode="channel", grayscale=grayscale,
                   sum_over=lambda a: a + captured["sums"])
    whole = pp.fit(X, mode="channel", grayscale=grayscale)
    if grayscale:   # float64 sums, added in another order
        np.testing.assert_allclose(split["mean"], whole["mean"], rtol=1e-12)
        np.testing.assert_allclose(split["std"], whole["std"], rtol=1e-12)
    else:           # integer histograms: exact
        assert split == whole
    # a process without training images of its own still gets the others' statistics
    alone = pp.fit(X[:0], mode="channel", grayscale=grayscale, sum_over=lambda a: a + captured["sums"])
    assert alone == pp.fit(X[k:], mode="channel", grayscale=grayscale)

"""Fake SVHN for the data tests: tiny train (30) and test (20) files in the official .mat
layout, the same prepared through the real tfds code path (with and without a 15-image
extra), the helpers that write and compare them, and `synthetic_npz` (learnable synthetic
digits as an .npz, for the run tests). conftest.py registers this module as
a plugin, so its session fixtures are built once however many test files use them; the
helpers are imported by name. `offline` is not autouse here (a plugin's autouse fixture
would reach the whole suite): every data test file applies it through `pytestmark`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from svhn_jax import data


@pytest.fixture
def offline(no_internet):
    """The test is refused the network (conftest.no_internet); each data test file
    applies this to all its tests with `pytestmark`."""


def synthetic_npz(folder: Path, n: int) -> Path:
    """folder/synthetic{n}.npz: n learnable SVHN-shaped digits (data.synthetic, seed 0),
    for tests that need no real data (they run in a user's clone too)."""
    X, y = data.synthetic(n, seed=0)
    np.savez(folder / f"synthetic{n}.npz", X=X, y=y)
    return folder / f"synthetic{n}.npz"


def _write_mat(path: Path, X_nhwc: np.ndarray, labels_1_to_10: np.ndarray) -> None:
    """Write a .mat file in the official layout: X (32, 32, 3, N) uint8, y (N, 1)."""
    scipy.io.savemat(str(path), {"X": np.moveaxis(X_nhwc, 0, -1),
                                 "y": labels_1_to_10.astype(np.uint8)[:, None]})


@pytest.fixture(scope="session")
def fake_mats(tmp_path_factory):
    """Folder with tiny official-format train (30) / test (20) files; and the expected arrays."""
    d = tmp_path_factory.mktemp("mats")
    rng = np.random.default_rng(123)
    expected = {}
    for split, n in (("train", 30), ("test", 20)):
        X = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(n) % 10 + 1  # 1..10, every label incl. 10 (= digit 0)
        rng.shuffle(labels)
        _write_mat(d / f"{split}_32x32.mat", X, labels)
        expected[split] = (X, (labels % 10).astype(np.int32))
    return d, expected


@pytest.fixture(scope="session")
def prepared(fake_mats, tmp_path_factory):
    """The fake .mat files prepared through the real tfds code path."""
    mat_dir, _ = fake_mats
    data_dir = tmp_path_factory.mktemp("tfds")
    out = data.prepare(mat_dir, data_dir, verify=False)
    assert out == data_dir
    return data_dir


@pytest.fixture(scope="session")
def with_extra(fake_mats, tmp_path_factory):
    """(data_dir, expected): train, test and a 15-image extra, prepared through tfds."""
    mat_dir = tmp_path_factory.mktemp("mats_extra")
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (mat_dir / name).write_bytes((fake_mats[0] / name).read_bytes())
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, size=(15, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(1, 11, size=15)
    _write_mat(mat_dir / "extra_32x32.mat", X, labels)
    train = fake_mats[1]["train"]
    expected = {"train": (np.concatenate([train[0], X]),
                          np.concatenate([train[1], labels % 10]).astype(np.int32)),
                "test": fake_mats[1]["test"]}
    data_dir = tmp_path_factory.mktemp("tfds_extra")
    data.prepare(mat_dir, data_dir, splits=("train", "test", "extra"), verify=False)
    return data_dir, expected


def _assert_same(got, expected):
    assert set(got) == set(expected)
    for split, (X, y) in expected.items():
        gX, gy = got[split]
        assert gX.dtype == np.uint8 and gX.shape == X.shape
        assert gX.flags.c_contiguous  # so X.reshape(N, -1) is a view, not a copy
        assert gy.dtype == np.int32 and gy.shape == y.shape
        np.testing.assert_array_equal(gX, X)
        np.testing.assert_array_equal(gy, y)

"""The data `load` accepts besides prepared SVHN: the real 8k slice (.npz, read without
writing a cache beside it), every kind of bad .npz or .mat input refused with a message
that names the file and the fix (exit code 3), the deterministic, learnable synthetic
digits (no second copy in memory), and `open_rows`, which reads only the rows asked for.
Offline, fast, able to fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from fake_svhn import _write_mat
from svhn_jax import data
from svhn_jax.data import prepared as prepared_mod
from svhn_jax.errors import DataError, SvhnJaxError

SLICE_COUNTS = [543, 1536, 1278, 889, 795, 732, 616, 605, 503, 503]

pytestmark = pytest.mark.usefixtures("offline")   # no test here reaches the network


# ------------------------------------------------------------- real 8k slice

def test_load_real_8k_slice(svhn_8k_path):
    before = sorted(p.name for p in svhn_8k_path.parent.iterdir())
    d = data.load(svhn_8k_path)
    assert list(d) == ["all"]
    X, y = d["all"]
    assert X.shape == (8000, 32, 32, 3) and X.dtype == np.uint8
    assert y.shape == (8000,) and y.dtype == np.int32
    assert np.bincount(y, minlength=10).tolist() == SLICE_COUNTS
    assert sorted(p.name for p in svhn_8k_path.parent.iterdir()) == before  # no cache written


# --------------------------------------------------------------- bad inputs

def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


GOOD_X = np.zeros((4, 32, 32, 3), np.uint8)
GOOD_Y = np.array([0, 1, 2, 9])


@pytest.mark.parametrize("arrays, pattern", [
    (dict(X=np.zeros((4, 28, 28, 3), np.uint8), y=GOOD_Y), r"28x28.*\(N, 32, 32, 3\)"),
    (dict(X=np.zeros((4, 32, 32), np.uint8), y=GOOD_Y), r"grayscale.*channel axis"),
    (dict(X=np.zeros((32, 32, 3, 4), np.uint8), y=GOOD_Y), r"\.mat layout.*moveaxis"),
    (dict(X=np.zeros((4, 32, 32, 3), np.float32), y=GOOD_Y), r"dtype float32.*uint8"),
    (dict(X=np.full((4, 32, 32, 3), np.nan), y=GOOD_Y), r"NaN or inf"),
    (dict(X=GOOD_X, y=np.array([0, -1, 2, 3])), r"negative labels"),
    (dict(X=GOOD_X, y=np.array([0, 1.5, 2, 3])), r"non-integer labels"),
    (dict(X=GOOD_X, y=np.array([0, 1, 2, 10])), r"labels >= 10.*y % 10"),
    (dict(X=GOOD_X, y=np.array(["a", "b", "c", "d"])), r"dtype <U1"),
    (dict(X=GOOD_X, y=np.array([0, 1, 2])), r"4 images but y holds 3 labels"),
    (dict(X=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0, int)), r"empty"),
    (dict(X=GOOD_X), r"no y array.*np\.savez"),
    (dict(y=GOOD_Y), r"no X array"),
], ids=["28x28", "grayscale", "mat-layout", "float", "nan", "negative", "non-integer",
        "ge10", "string-labels", "length", "empty", "no-y", "no-X"])
def test_bad_npz_contents(tmp_path, arrays, pattern):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern) as e:
        data.load(p)
    assert str(p) in str(e.value)
    assert e.value.exit_code == 3


def test_good_npz_and_label_column(tmp_path):
    X, y = data.load(_npz(tmp_path, X=GOOD_X, y=GOOD_Y[:, None].astype(float)))["all"]
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 2, 9]


def test_fortran_ordered_npz_comes_back_c_contiguous(tmp_path):
    want = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    X, _ = data.load(_npz(tmp_path, X=np.asfortranarray(want), y=GOOD_Y))["all"]
    assert X.flags.c_contiguous
    np.testing.assert_array_equal(X, want)


@pytest.mark.parametrize("mangle", ["truncated", "garbage"])
def test_corrupt_npz(tmp_path, mangle):
    p = _npz(tmp_path, X=np.ones((50, 32, 32, 3), np.uint8), y=np.arange(50) % 10)
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2] if mangle == "truncated" else b"\x00junk" * 99)
    with pytest.raises(DataError, match=r"Cannot read .*truncated or not a valid \.npz"):
        data.load(p)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*Accepted: 'svhn'"):
        data.load(tmp_path / "nowhere")


def test_unknown_file_type(tmp_path):
    p = tmp_path / "images.csv"
    p.write_text("1,2,3")
    with pytest.raises(DataError, match=r"images\.csv is not a data source.*Accepted"):
        data.load(p)
    q = tmp_path / "test_32x32.mat"
    q.write_bytes(b"")
    with pytest.raises(DataError, match="pass the folder"):
        data.load(q)


def test_folder_without_mat_files(tmp_path):
    with pytest.raises(DataError, match=r"lacks train_32x32\.mat, test_32x32\.mat.*download"):
        data.load(tmp_path)


def test_truncated_mat_in_folder(fake_mats, tmp_path):
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / name).write_bytes((fake_mats[0] / name).read_bytes())
    blob = (tmp_path / "test_32x32.mat").read_bytes()
    (tmp_path / "test_32x32.mat").write_bytes(blob[:200])
    with pytest.raises(DataError, match=r"test_32x32\.mat: it is truncated.*download it again"):
        data.load(tmp_path)


def test_mat_with_bad_labels(tmp_path):
    _write_mat(tmp_path / "train_32x32.mat", GOOD_X, np.array([1, 2, 3, 11]))
    _write_mat(tmp_path / "test_32x32.mat", GOOD_X, np.array([1, 2, 3, 4]))
    with pytest.raises(DataError, match=r"labels must be 1\.\.10"):
        data.load(tmp_path)


def test_validate_arrays_returns_canonical_types():
    X, y = data.validate_arrays(GOOD_X, GOOD_Y.astype(np.int64), "mine")
    assert X.dtype == np.uint8 and y.dtype == np.int32
    with pytest.raises(DataError, match="^mine: "):
        data.validate_arrays(GOOD_X, GOOD_Y[:2], "mine")


# --------------------------------------------------------------- synthetic

def test_synthetic_shape_and_determinism():
    X, y = data.synthetic(100, seed=3)
    assert X.shape == (100, 32, 32, 3) and X.dtype == np.uint8
    assert y.shape == (100,) and y.dtype == np.int32 and 0 <= y.min() and y.max() <= 9
    X2, y2 = data.synthetic(100, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, data.synthetic(100, seed=4)[0])
    X, y = data.synthetic(20_000, seed=0)
    assert len(np.unique(X[:500].reshape(500, -1), axis=0)) == 500
    assert np.bincount(y, minlength=10).min() > 1600  # 2000 expected per class
    d = data.load("synthetic", synthetic_n=50, seed=1)
    np.testing.assert_array_equal(d["all"][0], data.synthetic(50, 1)[0])
    with pytest.raises(SvhnJaxError):
        data.synthetic(0, 0)


def test_synthetic_rows_are_those_of_the_whole_set():
    X, y = data.synthetic(500, seed=3)
    rows = np.array([499, 0, 7, 7, 300])
    Xr, yr = data.synthetic(500, seed=3, rows=rows)
    np.testing.assert_array_equal(Xr, X[rows])
    np.testing.assert_array_equal(yr, y[rows])
    assert data.synthetic(500, seed=3, rows=[])[0].shape == (0, 32, 32, 3)
    opened = data.open_rows("synthetic", synthetic_n=500, seed=3)
    np.testing.assert_array_equal(opened["all"].y, y)
    np.testing.assert_array_equal(opened["all"].take(rows), X[rows])


def test_open_rows_of_prepared_svhn_reads_its_cache_in_part(with_extra, monkeypatch):
    data_dir, expected = with_extra
    data.load("svhn", data_dir=data_dir, extra=True)   # the cache exists from here on

    def no_whole_load(*a, **k):
        raise AssertionError("loaded every image instead of reading the rows asked for")

    monkeypatch.setattr(prepared_mod, "load_prepared", no_whole_load)
    opened = data.open_rows("svhn", data_dir=data_dir, extra=True)
    rows = np.array([44, 3, 29, 30, 0])          # extra starts at row 30 of "train"
    for split in ("train", "test"):
        X, y = expected[split]
        np.testing.assert_array_equal(opened[split].y, y)
        np.testing.assert_array_equal(opened[split].take(rows[rows < len(y)]), X[rows[rows < len(y)]])


def test_open_rows_decodes_first_when_there_is_no_cache(fake_mats, tmp_path):
    data_dir = tmp_path / "tfds"
    data.prepare(fake_mats[0], data_dir, verify=False)
    opened = data.open_rows("svhn", data_dir=data_dir)
    X, y = fake_mats[1]["test"]
    np.testing.assert_array_equal(opened["test"].take(np.arange(len(y))), X)
    assert len(list((data_dir / "svhn_cropped" / "3.1.0" / data.CACHE_DIRNAME).glob("*.npy"))) == 4


def test_synthetic_needs_no_second_copy():
    """Peak memory is X itself plus a fixed few MB: no float or full-size uint8 copy.

    NumPy reports its allocations to tracemalloc, so this counts bytes, not time.
    """
    import tracemalloc

    tracemalloc.start()
    try:
        X, _ = data.synthetic(20_000, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert X.dtype == np.uint8 and X.nbytes > 32 * 2**20  # so any full copy would show
    assert peak - X.nbytes < 32 * 2**20, f"peak {peak} bytes for X of {X.nbytes}"


def test_synthetic_is_learnable():
    """Class templates make nearest-class-mean well above chance."""
    X, y = data.synthetic(4000, seed=0)
    Xf = X.reshape(len(X), -1).astype(np.float32)
    means = np.stack([Xf[:2000][y[:2000] == c].mean(0) for c in range(10)])
    pred = np.argmin(((Xf[2000:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[2000:]).mean() > 0.5

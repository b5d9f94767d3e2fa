"""SVHN through tensorflow-datasets: `prepare` writes the stock svhn_cropped dataset
(array_record, the stock builder's name, version and features, the official checksums),
`load` reads it back bit for bit and then from its .npy cache (rebuilt when corrupt or of
another size, skipped when unwritable), the extra split appended to train only when asked
for (and by `svhn-jax train --extra`), and a folder of .mat files loaded directly. All
offline, on the tiny fake files of fake_svhn.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fake_svhn import _assert_same
from svhn_jax import data
from svhn_jax.data import cache
from svhn_jax.data import prepared as prepared_mod
from svhn_jax.errors import DataError, DownloadError, SvhnJaxError

pytestmark = pytest.mark.usefixtures("offline")   # no test here reaches the network


# ------------------------------------------------- prepare / load through tfds

def test_prepare_writes_array_record_svhn_cropped(prepared):
    vdir = prepared / "svhn_cropped" / "3.1.0"
    info = json.loads((vdir / "dataset_info.json").read_text())
    assert info["name"] == "svhn_cropped" and info["version"] == "3.1.0"
    assert info["fileFormat"] == "array_record"
    assert {s["name"]: s["shardLengths"] for s in info["splits"]} == {
        "train": ["30"], "test": ["20"]}  # no "extra" required
    assert list(vdir.glob("svhn_cropped-train.array_record-*"))


def test_builder_has_stock_name_version_features(tmp_path):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.svhn_cropped.svhn_cropped_dataset_builder import (
        Builder,
    )

    from svhn_jax.data.tfds_builder import SvhnCroppedNoTF

    ours = SvhnCroppedNoTF(data_dir=str(tmp_path / "a")).info
    stock = Builder(data_dir=str(tmp_path / "b")).info
    assert ours.name == stock.name == "svhn_cropped"
    assert str(ours.version) == str(stock.version) == "3.1.0"
    assert ours.features.to_json_content() == stock.features.to_json_content()
    assert ours.supervised_keys == stock.supervised_keys
    # registering ours must not have replaced the stock builder
    assert tfds.builder_cls("svhn_cropped") is not SvhnCroppedNoTF


def test_stock_data_source_reads_prepared_dataset(prepared, fake_mats):
    import tensorflow_datasets as tfds

    _, expected = fake_mats
    ds = tfds.data_source("svhn_cropped", split="test", data_dir=str(prepared),
                          download=False)
    assert len(ds) == 20
    ex = ds[0]
    i = int(ex["id"].decode().split("_")[1])
    np.testing.assert_array_equal(ex["image"], expected["test"][0][i])
    assert ex["label"] == expected["test"][1][i]


def test_load_svhn_bit_identical_then_cached(prepared, fake_mats, monkeypatch):
    _, expected = fake_mats
    first = data.load("svhn", data_dir=prepared)
    _assert_same(first, expected)
    cache = prepared / "svhn_cropped" / "3.1.0" / data.CACHE_DIRNAME
    assert len(list(cache.glob("*.npy"))) == 4
    assert not list(cache.glob("*.tmp"))

    def no_decoding(*a, **k):
        raise AssertionError("second load decoded the PNGs instead of using the cache")

    monkeypatch.setattr(prepared_mod, "_decode_split", no_decoding)
    _assert_same(data.load("svhn", data_dir=prepared), expected)


def test_load_svhn_uses_tfds_data_dir_env(prepared, fake_mats, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(prepared))
    _assert_same(data.load("svhn"), fake_mats[1])


def test_corrupt_cache_is_rebuilt(prepared, fake_mats):
    data.load("svhn", data_dir=prepared)
    [px] = (prepared / "svhn_cropped" / "3.1.0" / data.CACHE_DIRNAME).glob("train.*.X.npy")
    px.write_bytes(b"garbage")
    _assert_same(data.load("svhn", data_dir=prepared), fake_mats[1])
    assert np.load(px).shape == (30, 32, 32, 3)


def test_unwritable_cache_is_skipped_silently(fake_mats, tmp_path, monkeypatch):
    mat_dir, expected = fake_mats
    data.prepare(mat_dir, tmp_path, verify=False)

    def refuse(path, arr):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "_save_npy_atomic", refuse)
    _assert_same(data.load("svhn", data_dir=tmp_path), expected)
    assert not list((tmp_path / "svhn_cropped" / "3.1.0").rglob("*.npy"))


def test_prepare_twice_is_a_no_op(prepared, fake_mats):
    info = prepared / "svhn_cropped" / "3.1.0" / "dataset_info.json"
    before = info.stat().st_mtime_ns
    assert data.prepare(fake_mats[0], prepared, verify=False) == prepared
    assert info.stat().st_mtime_ns == before


def test_prepare_missing_split_file_lists_it(fake_mats, tmp_path):
    with pytest.raises(DataError, match=r"lacks extra_32x32\.mat.*svhn-jax download"):
        data.prepare(fake_mats[0], tmp_path, splits=("train", "test", "extra"),
                     verify=False)


def test_prepare_verifies_official_checksums(fake_mats, tmp_path):
    with pytest.raises(DownloadError, match=r"expected 182040794 bytes.*--no-verify"):
        data.prepare(fake_mats[0], tmp_path)


def test_prepare_truncated_mat_is_data_error(fake_mats, tmp_path):
    mat_dir = tmp_path / "mats"
    mat_dir.mkdir()
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (mat_dir / name).write_bytes((fake_mats[0] / name).read_bytes())
    blob = (mat_dir / "train_32x32.mat").read_bytes()
    (mat_dir / "train_32x32.mat").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated"):
        data.prepare(mat_dir, tmp_path / "tfds", verify=False)


def test_decode_rejects_records_without_their_official_ids(prepared, monkeypatch):
    """Records are placed by id ("test_000123"); a repeated id cannot go unnoticed."""
    import tensorflow_datasets as tfds

    class Repeats:  # every record claims to be the first image
        def __len__(self):
            return 20

        def __getitems__(self, keys):
            return [{"image": np.zeros((32, 32, 3), np.uint8), "label": 0,
                     "id": b"test_000000"} for _ in keys]

    monkeypatch.setattr(tfds, "data_source", lambda *a, **k: Repeats())
    with pytest.raises(DataError, match=r"id 'test_000000'.*each once.*prepare again"):
        prepared_mod._decode_split(prepared, "test", np.empty((20, 32, 32, 3), np.uint8),
                                   np.empty(20, np.int32))


def test_load_extra_appends_it_to_train_then_reads_the_cache(with_extra, monkeypatch):
    data_dir, expected = with_extra
    _assert_same(data.load("svhn", data_dir=data_dir, extra=True), expected)
    cache_dir = data_dir / "svhn_cropped" / "3.1.0" / data.CACHE_DIRNAME
    assert len(list(cache_dir.glob("extra.*.npy"))) == 2

    def no_decoding(*a, **k):
        raise AssertionError("decoded the PNGs instead of reading the cache")

    monkeypatch.setattr(prepared_mod, "_decode_split", no_decoding)
    _assert_same(data.load("svhn", data_dir=data_dir, extra=True), expected)
    without = data.load("svhn", data_dir=data_dir)  # extra stays out unless asked for
    np.testing.assert_array_equal(without["train"][0], expected["train"][0][:30])
    assert data.ensure_available("svhn", data_dir, download=False, extra=True) == data_dir


def test_train_extra_setting_trains_on_the_extra_images(with_extra, tmp_path):
    """`svhn-jax train --data svhn --extra` splits train+extra into its training and
    validation parts; without --extra the same data give only the train images."""
    from svhn_jax import config
    from svhn_jax.run import evaluate, parts as rundata, launch as runs

    data_dir, expected = with_extra
    base = config.make(data="svhn", data_dir=str(data_dir), hidden=(8,), batch=8, epochs=1,
                       val_fraction=0.2, tensorboard=False)
    n_train = len(expected["train"][1])
    for extra, n in ((True, n_train), (False, n_train - 15)):
        c = base.replace(extra=extra)
        parts = rundata.load_split(c)
        assert len(parts["train"][1]) + len(parts["val"][1]) == n
        m = runs.train_run(c, tmp_path / f"extra_{extra}", quiet=True)
        assert m["n_train"] + m["n_val"] == n and m["n_test"] == len(expected["test"][1])
        scored = evaluate.evaluate_run(tmp_path / f"extra_{extra}")   # the same test images
        assert (scored["accuracy"], scored["n"]) == (m["test_acc"], m["n_test"])
        held_out = evaluate.evaluate_run(tmp_path / f"extra_{extra}", split="val")
        assert held_out["n"] == m["n_val"] and held_out["overlap_with_training"] == 0


def test_extra_where_it_cannot_take_effect(prepared, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("downloaded although the dataset cannot be extended")

    monkeypatch.setattr(prepared_mod, "download_files", no_download)
    for call in (lambda: data.load("svhn", data_dir=prepared, extra=True),
                 lambda: data.ensure_available("svhn", prepared, download=True, extra=True)):
        with pytest.raises(DataError, match=r"without \['extra'\].*delete .*--extra"):
            call()
    with pytest.raises(SvhnJaxError, match="needs --data svhn"):
        data.load("synthetic", synthetic_n=5, extra=True)


def test_cache_of_another_size_is_not_read(prepared, fake_mats):
    """A cache file whose shape does not match the split is decoded again, not trusted."""
    data.load("svhn", data_dir=prepared)
    [px] = (prepared / "svhn_cropped" / "3.1.0" / data.CACHE_DIRNAME).glob("test.*.X.npy")
    np.save(px, np.zeros((19, 32, 32, 3), np.uint8))
    _assert_same(data.load("svhn", data_dir=prepared), fake_mats[1])
    assert np.load(px).shape == (20, 32, 32, 3)


def test_load_mat_folder(fake_mats):
    mat_dir, expected = fake_mats
    _assert_same(data.load(mat_dir), expected)
    _assert_same(data.load(str(mat_dir)), expected)

"""Tests for the svhn_jax.data package (download, tfds builder, sources, cache, splits).

Offline, fast, able to fail.

Nothing here touches the network: an autouse fixture refuses every socket
connection that is not to 127.0.0.1, and downloads are tested against a
local http.server serving small fake files.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from svhn_jax import data
from svhn_jax.data import cache, fetch
from svhn_jax.data import prepared as prepared_mod
from svhn_jax.errors import DataError, DownloadError, SvhnJaxError

ROOT = Path(__file__).resolve().parents[1]
SLICE_COUNTS = [543, 1536, 1278, 889, 795, 732, 616, 605, 503, 503]


# ------------------------------------------------------------------ fixtures

@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Fail any connection that is not to the loopback interface."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


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


def _assert_same(got, expected):
    assert set(got) == set(expected)
    for split, (X, y) in expected.items():
        gX, gy = got[split]
        assert gX.dtype == np.uint8 and gX.shape == X.shape
        assert gX.flags.c_contiguous  # so X.reshape(N, -1) is a view, not a copy
        assert gy.dtype == np.int32 and gy.shape == y.shape
        np.testing.assert_array_equal(gX, X)
        np.testing.assert_array_equal(gy, y)


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


# ------------------------------------------- missing data: fast, clear, offline

def test_missing_prepared_dataset_fast_clear_offline(tmp_path):
    """Runs in a fresh interpreter: the error must not need tensorflow_datasets."""
    code = (
        "import socket, sys, time\n"
        "def refuse(*a): raise AssertionError('network')\n"
        "socket.socket.connect = refuse\n"
        "t = time.perf_counter()\n"
        "from svhn_jax.data import load\n"
        "from svhn_jax.errors import DataError\n"
        "try:\n"
        f"    load('svhn', data_dir={str(tmp_path)!r})\n"
        "except DataError as e:\n"
        "    print(repr(str(e)))\n"
        "print(time.perf_counter() - t)\n"
        "print('tensorflow_datasets' in sys.modules)\n"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    wall = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    msg, seconds, imported = out.stdout.strip().splitlines()
    assert "not prepared" in msg and str(tmp_path) in msg
    assert "svhn-jax train --download" in msg
    assert "svhn-jax download --dir" in msg and "svhn-jax prepare --mat-dir" in msg
    assert imported == "False"
    assert float(seconds) < 2.0, f"import + error took {seconds} s"
    assert wall < 10.0  # interpreter start included; generous for a loaded machine


def test_ensure_available_without_download_raises_fix(tmp_path):
    with pytest.raises(DataError, match="svhn-jax train --download") as e:
        data.ensure_available("svhn", tmp_path, download=False)
    assert e.value.exit_code == 3
    assert data.ensure_available("synthetic", tmp_path, download=False) is None


def test_ensure_available_prepares_from_local_mats(fake_mats, tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("ensure_available downloaded although the files were there")

    monkeypatch.setattr(prepared_mod, "download_files", no_download)
    mat_dir, expected = fake_mats
    out = data.ensure_available("svhn", tmp_path, download=False, mat_dir=mat_dir,
                                verify=False)
    assert out == tmp_path
    _assert_same(data.load("svhn", data_dir=out), expected)
    assert data.ensure_available("svhn", tmp_path, download=False) == tmp_path


# --------------------------------------------------------------- download

class _Server:
    """A local HTTP server serving `files` (name -> bytes), with optional Range support."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, status = server.files[name], 200
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    body, status = body[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    """Serve fake train/test files and point fetch.BASE_URL / OFFICIAL at them."""
    srv = _Server()
    rng = np.random.default_rng(7)
    for split, n in (("train", 300_000), ("test", 70_000)):
        name = f"{split}_32x32.mat"
        blob = rng.bytes(n)
        srv.files[name] = blob
        # the dict is shared by every module of the package: patch its items
        monkeypatch.setitem(data.OFFICIAL, split, (name, n, hashlib.sha256(blob).hexdigest()))
    monkeypatch.setattr(fetch, "BASE_URL", srv.url)
    yield srv
    srv.close()


def test_download_fetches_and_verifies(server, tmp_path, capsys):
    out = data.download(tmp_path / "d", timeout=5)
    assert set(out) == {"train", "test"}
    for split, path in out.items():
        assert path.read_bytes() == server.files[path.name]
    assert not list((tmp_path / "d").glob("*.part"))
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a tty


def test_download_progress_only_on_a_tty(server, tmp_path, monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(fetch.sys, "stderr", err)
    data.download(tmp_path / "quiet", splits=("test",), timeout=5, progress=False)
    assert err.getvalue() == ""
    data.download(tmp_path / "loud", splits=("test",), timeout=5)
    assert "test_32x32.mat: 100.0%" in err.getvalue()


def test_download_skips_verified_files(server, tmp_path):
    data.download(tmp_path, timeout=5)
    server.requests.clear()
    data.download(tmp_path, timeout=5)
    assert server.requests == []


def test_download_resumes_partial_file(server, tmp_path):
    blob = server.files["train_32x32.mat"]
    (tmp_path / "train_32x32.mat.part").write_bytes(blob[:123_456])
    out = data.download(tmp_path, splits=("train",), timeout=5)
    assert server.requests == [("train_32x32.mat", "bytes=123456-")]
    assert out["train"].read_bytes() == blob


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    server.honour_range = False
    blob = server.files["train_32x32.mat"]
    (tmp_path / "train_32x32.mat.part").write_bytes(blob[:1000])
    out = data.download(tmp_path, splits=("train",), timeout=5)
    assert out["train"].read_bytes() == blob


def test_download_checksum_mismatch(server, tmp_path):
    name, size, sha = data.OFFICIAL["test"]
    server.files[name] = bytes(size)  # right length, wrong content
    with pytest.raises(DownloadError) as e:
        data.download(tmp_path, splits=("test",), timeout=5)
    msg = str(e.value)
    assert f"sha256 {sha}" in msg and hashlib.sha256(bytes(size)).hexdigest() in msg
    assert "deleted" in msg and "rerun" in msg
    assert e.value.exit_code == 4
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".part")).exists()


def test_download_keeps_short_download_for_resume(server, tmp_path):
    """A server that closes early leaves a .part that the next call resumes."""
    name = "train_32x32.mat"
    blob = server.files[name]
    server.files[name] = blob[:100_000]  # the host sends only part of the file
    with pytest.raises(DownloadError, match=r"stopped early: 100000 of 300000.*rerun"):
        data.download(tmp_path, splits=("train",), timeout=5)
    assert (tmp_path / (name + ".part")).stat().st_size == 100_000
    server.files[name] = blob
    server.requests.clear()
    assert data.download(tmp_path, splits=("train",), timeout=5)["train"].read_bytes() == blob
    assert server.requests == [(name, "bytes=100000-")]


def test_download_never_replaces_an_existing_bad_file(server, tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"mine")
    with pytest.raises(DownloadError, match=r"expected 70000 bytes, got 4.*delete"):
        data.download(tmp_path, splits=("test",), timeout=5)
    assert (tmp_path / "test_32x32.mat").read_bytes() == b"mine"
    assert server.requests == []


def test_download_http_error(server, tmp_path):
    del server.files["test_32x32.mat"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        data.download(tmp_path, splits=("test",), timeout=5)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    return port


def test_download_unreachable_host_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "BASE_URL", f"http://127.0.0.1:{_closed_port()}/")
    t = time.perf_counter()
    with pytest.raises(DownloadError, match=r"Cannot reach .*Fix:.*--data synthetic") as e:
        data.download(tmp_path, timeout=2)
    assert time.perf_counter() - t < 3
    assert e.value.exit_code == 4
    assert not list(tmp_path.iterdir())


def test_verify_file_messages(tmp_path):
    p = tmp_path / "test_32x32.mat"
    p.write_bytes(b"x" * 10)
    with pytest.raises(DownloadError, match=r"expected 64275384 bytes, got 10.*--no-verify"):
        data.verify_file(p, "test")
    with pytest.raises(DataError, match="does not exist"):
        data.verify_file(tmp_path / "nope.mat", "test")
    with pytest.raises(SvhnJaxError, match="Unknown SVHN split"):
        data.verify_file(p, "validation")
    assert data.sha256_file(p) == hashlib.sha256(b"x" * 10).hexdigest()


def test_ensure_available_downloads_and_prepares(server, fake_mats, tmp_path):
    """End to end: local 'official' host -> download -> prepare -> load."""
    mat_dir, expected = fake_mats
    official = {}
    for split in ("train", "test"):
        name = f"{split}_32x32.mat"
        blob = (mat_dir / name).read_bytes()
        server.files[name] = blob
        official[split] = (name, len(blob), hashlib.sha256(blob).hexdigest())
    data.OFFICIAL.update(official)  # monkeypatched dict: restored after the test
    out = data.ensure_available("svhn", tmp_path / "tfds", download=True,
                                mat_dir=tmp_path / "mats")
    _assert_same(data.load("svhn", data_dir=out), expected)


# ------------------------------------ advice that works outside this checkout

@pytest.fixture(params=["slice-absent", "slice-present"])
def slice_here(request, tmp_path, monkeypatch):
    """Run from a fresh folder; with "slice-present", data.EIGHT_K_SLICE exists relative to it."""
    work = tmp_path / "clone"
    work.mkdir()
    present = request.param == "slice-present"
    if present:
        fake = work / data.EIGHT_K_SLICE
        fake.parent.mkdir(parents=True)
        fake.write_bytes(b"")
    monkeypatch.chdir(work)
    return present


def _message(call) -> str:
    with pytest.raises(SvhnJaxError) as e:
        call()
    return str(e.value)


def test_error_messages_offer_the_8k_slice_only_where_it_exists(slice_here, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(fetch, "BASE_URL", f"http://127.0.0.1:{_closed_port()}/")
    messages = {
        "download failure": _message(lambda: data.download(tmp_path / "mats", timeout=2)),
        "not prepared (load)": _message(lambda: data.load("svhn", data_dir=tmp_path)),
        "not prepared (ensure_available)": _message(
            lambda: data.ensure_available("svhn", tmp_path, download=False)),
        "unknown data spec": _message(lambda: data.load("svhn_full")),
    }
    for what, msg in messages.items():
        for anywhere in ("--data synthetic", "train_32x32.mat and test_32x32.mat",
                         "FILE.npz", "X uint8 (N, 32, 32, 3)", "y 0..9"):
            assert anywhere in msg, (what, msg)
        assert (f"--data {data.EIGHT_K_SLICE}" in msg) == slice_here, (what, msg)
        assert (Path(data.EIGHT_K_SLICE).stem in msg) == slice_here, (what, msg)


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


# --------------------------------------------------------- stratified_split

def _check_split(y, fractions, parts):
    n = len(y)
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))  # disjoint, covering
    for f, p in zip(fractions, parts):
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
        for c in np.unique(y):
            n_c = int((y == c).sum())
            assert abs(int((y[p] == c).sum()) - n_c * f) < 1 + 1e-9


@st.composite
def _fractions(draw):
    w = draw(st.lists(st.integers(1, 20), min_size=1, max_size=4))
    return [x / sum(w) for x in w]


@settings(max_examples=150, deadline=None)
@given(y=st.lists(st.integers(0, 9), min_size=1, max_size=400),
       fractions=_fractions(), seed=st.integers(0, 2**32 - 1))
def test_stratified_split_properties(y, fractions, seed):
    y = np.asarray(y)
    try:
        parts = data.stratified_split(y, fractions, seed)
    except SvhnJaxError as e:
        # only legitimate when some part's share is below one image in every class
        assert "empty part" in str(e)
        assert len(y) * min(fractions) < len(np.unique(y))
        return
    _check_split(y, fractions, parts)
    again = data.stratified_split(y, fractions, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_stratified_split_seed_and_sizes():
    y = np.repeat(np.arange(10), [543, 1536, 1278, 889, 795, 732, 616, 605, 503, 503])
    a = data.stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    b = data.stratified_split(y, (0.8, 0.1, 0.1), seed=1)
    _check_split(y, (0.8, 0.1, 0.1), a)
    assert not np.array_equal(a[0], b[0])
    assert [len(p) for p in a] == pytest.approx([6400, 800, 800], abs=10)


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.2, -0.2), (0.0, 1.0), (), ("a",),
                                       (float("nan"), 1.0)])
def test_stratified_split_bad_fractions(fractions):
    with pytest.raises(SvhnJaxError, match="fraction") as e:
        data.stratified_split(np.arange(20) % 10, fractions, 0)
    assert e.value.exit_code == 2


# ----------------------------------------------------------------- imports

def test_importing_data_imports_neither_tfds_scipy_nor_jax():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, svhn_jax.data; from svhn_jax.data import "
         "preprocess; print(*(m in sys.modules for m in "
         "('tensorflow_datasets', 'scipy.io', 'jax')))"],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr


def _package_imports() -> dict[str, set[str]]:
    """{module: modules it imports, at any depth of its code} for svhn_jax/data/*.py."""
    import ast

    graph = {}
    for path in sorted((ROOT / "svhn_jax" / "data").glob("*.py")):
        name = "svhn_jax.data" + ("" if path.stem == "__init__" else f".{path.stem}")
        package = "svhn_jax.data" if path.stem == "__init__" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                mod = ".".join(p for p in (base, node.module) if p)
                # `from . import x` imports the submodule x
                edges.update(f"{mod}.{a.name}" if node.module is None else mod
                             for a in node.names)
        graph[name] = edges
    return graph


def test_data_package_layout():
    """No import cycle, nothing of training imported, no module over 400 lines."""
    graph = _package_imports()
    assert "svhn_jax.data.tfds_builder" in graph and "svhn_jax.data.arrays" in graph
    inside = {m: {e for e in edges if e in graph} for m, edges in graph.items()}
    done: set[str] = set()

    def visit(m, stack):
        assert m not in stack, f"import cycle: {' -> '.join(stack + [m])}"
        if m not in done:
            for e in inside[m]:
                visit(e, stack + [m])
            done.add(m)

    for m in graph:
        visit(m, [])
    assert "svhn_jax.data.arrays" in inside["svhn_jax.data.tfds_builder"]
    outside = {e for edges in graph.values() for e in edges
               if e.startswith("svhn_jax") and e not in graph}
    assert outside == {"svhn_jax.errors", "svhn_jax.atomic"}, outside
    for path in (ROOT / "svhn_jax" / "data").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path


# ------------------------------------------------------ the train command's data path

def _serve_fake_official(server, mat_dir):
    for split in ("train", "test"):
        name = f"{split}_32x32.mat"
        blob = (mat_dir / name).read_bytes()
        server.files[name] = blob
        data.OFFICIAL[split] = (name, len(blob), hashlib.sha256(blob).hexdigest())


def test_train_download_fetches_prepares_and_trains(server, fake_mats, tmp_path, capsys):
    """`svhn-jax train --download` on a fresh machine: one command from nothing to a run."""
    from svhn_jax import cli

    _serve_fake_official(server, fake_mats[0])
    out = tmp_path / "run"
    code = cli.main(["train", "--download", "--data", "svhn", "--data-dir", str(tmp_path / "tfds"),
                     "--out", str(out), "--hidden", "8", "--epochs", "1", "--batch", "8",
                     "--val-fraction", "0.34", "--json"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_test"] == 20 and metrics["n_train"] + metrics["n_val"] == 30
    assert (tmp_path / "tfds" / "svhn_cropped" / "3.1.0" / "dataset_info.json").exists()


def test_train_download_unreachable_host_fails_fast(tmp_path, monkeypatch, capsys):
    from svhn_jax import cli
    from svhn_jax.errors import EXIT_NETWORK

    monkeypatch.setattr(fetch, "BASE_URL", f"http://127.0.0.1:{_closed_port()}/")
    t = time.perf_counter()
    code = cli.main(["train", "--download", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    assert code == EXIT_NETWORK
    assert time.perf_counter() - t < 30  # one attempt, no retries (generous bound: noisy machines)
    assert "Cannot reach" in capsys.readouterr().err


def test_train_without_data_fails_before_importing_jax(tmp_path):
    """The missing-data error comes before JAX is even imported (well under 2 s)."""
    code = ("import sys; from svhn_jax import cli; "
            f"rc = cli.main(['train', '--data-dir', {str(tmp_path)!r}, '--out', {str(tmp_path / 'r')!r}]); "
            "assert 'jax' not in sys.modules, 'jax was imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "svhn-jax train --download" in r.stderr and "Traceback" not in r.stderr

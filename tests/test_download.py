"""Getting SVHN: missing data fails fast (well under 2 s, before tensorflow_datasets or
JAX is imported) with a message that gives the fixing command; `download` fetches,
verifies, resumes and refuses against a local http.server serving small fake files (an
unreachable host fails at once, a bad checksum deletes what it fetched, an existing file
is never replaced); the advice in every such message works outside this checkout (it
offers the 8k slice only where it exists); and `svhn-jax train --download` goes from
nothing to a run. Nothing here reaches the network: every connection that is not to
127.0.0.1 is refused.
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

from fake_svhn import _assert_same
from svhn_jax import data
from svhn_jax.data import fetch
from svhn_jax.data import prepared as prepared_mod
from svhn_jax.errors import DataError, DownloadError, SvhnJaxError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("offline")   # no test here reaches the network


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

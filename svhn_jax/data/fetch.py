"""The official SVHN `.mat` files: where they live, their checksums, a resumable download.

    download(dest_dir, ("train", "test"))   # -> {split: verified path}

Files are checked against the official size and sha256 (from the stock
tensorflow-datasets builder's `checksums.tsv`) before they are renamed into
place; a partial `NAME.part` is resumed with an HTTP Range request. One
attempt per file with a short socket timeout, so an unreachable host fails fast.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from ..errors import DataError, DownloadError, SvhnJaxError
from .hints import offline_options

BASE_URL = "http://ufldl.stanford.edu/housenumbers/"

# split -> (file name, size in bytes, sha256); from the stock tfds builder's checksums.tsv
OFFICIAL: dict[str, tuple[str, int, str]] = {
    "train": ("train_32x32.mat", 182_040_794,
              "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8"),
    "test": ("test_32x32.mat", 64_275_384,
             "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b"),
    "extra": ("extra_32x32.mat", 1_329_278_602,
              "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3"),
}

_CHUNK = 1 << 20  # bytes per read when hashing / downloading

__all__ = ["BASE_URL", "OFFICIAL", "official", "sha256_file", "verify_file", "download"]


def official(split: str) -> tuple[str, int, str]:
    """(file name, size in bytes, sha256) of an official split; SvhnJaxError if unknown."""
    if split not in OFFICIAL:
        raise SvhnJaxError(
            f"Unknown SVHN split {split!r}. Fix: use one of {', '.join(OFFICIAL)}.")
    return OFFICIAL[split]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, split: str) -> Path:
    """Check `path` against the official size, then sha256, of `split`'s file.

    Raises:
      DataError: the file does not exist.
      DownloadError: wrong size or checksum (names the file, expected vs got, fix).
    """
    path = Path(path)
    name, size, sha = official(split)
    fix = (f"Fix: delete {path} and download it again (svhn-jax download --dir "
           f"{path.parent}), or, for a file you made yourself, pass --no-verify.")
    if not path.is_file():
        raise DataError(f"{path} does not exist. Fix: svhn-jax download --dir {path.parent}")
    got_size = path.stat().st_size
    if got_size != size:
        raise DownloadError(
            f"{path} is not the official {name}: expected {size} bytes, got "
            f"{got_size}. {fix}")
    got_sha = sha256_file(path)
    if got_sha != sha:
        raise DownloadError(
            f"{path} is not the official {name}: expected sha256 {sha}, got "
            f"{got_sha}. {fix}")
    return path


def _progress(name: str, done: int, total: int, t0: float, start: int) -> None:
    rate = (done - start) / max(time.monotonic() - t0, 1e-6) / 1e6
    sys.stderr.write(f"\r{name}: {100 * done / max(total, 1):5.1f}% "
                     f"{done / 1e6:7.1f}/{total / 1e6:.1f} MB  {rate:5.1f} MB/s ")
    sys.stderr.flush()


def _fetch(url: str, part: Path, size: int, timeout: float, progress: bool) -> None:
    """Fetch `url` into `part`, resuming from its current length with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a prefix of the right file: start over
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": "svhn-jax"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(
            f"Download of {url} failed: HTTP {e.code} {e.reason}. Fix: check the URL "
            f"in a browser; if the host moved, download the .mat files by hand into "
            f"{part.parent} and run svhn-jax prepare --mat-dir {part.parent} "
            f"--data-dir DATA_DIR. {offline_options()}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"Cannot reach {url} ({reason}; one attempt, timeout {timeout:g} s). "
            f"Fix: check your network or proxy (http_proxy), then rerun; or download "
            f"the .mat files by hand into {part.parent} and run svhn-jax prepare "
            f"--mat-dir {part.parent} --data-dir DATA_DIR. {offline_options()}") from None
    show = progress and sys.stderr.isatty()
    with resp:
        if have and resp.status != 206:  # server ignored the Range header
            have = 0
        mode = "ab" if have else "wb"
        done, t0, start = have, time.monotonic(), have
        try:
            with open(part, mode) as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if show:
                        _progress(part.name[:-5], done, size, t0, start)
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, short reads
            raise DownloadError(
                f"Download of {url} was interrupted after {done} of {size} bytes "
                f"({type(e).__name__}: {e}); the partial file {part} is kept. Fix: "
                f"rerun the same command to resume.") from None
        finally:
            if show:
                sys.stderr.write("\n")


def download(dest_dir: str | os.PathLike, splits: Sequence[str] = ("train", "test"), *,
             timeout: float = 10.0, progress: bool = True) -> dict[str, Path]:
    """Download the official `.mat` files of `splits` from `BASE_URL` into `dest_dir`.

    Files already present and verified are skipped; a partial `NAME.part` is
    resumed with an HTTP Range request; every file is checked (size, sha256)
    before it is renamed into place atomically. One attempt per file with a
    socket timeout of `timeout` seconds: an unreachable host fails fast.
    The progress bar goes to stderr, only when `progress` and stderr is a tty.

    Returns: {split: path of the verified file}.
    Raises: DownloadError (network failure, HTTP error, checksum mismatch).
    """
    dest = Path(dest_dir).expanduser()
    for split in splits:
        official(split)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create {dest} ({e}). Fix: choose a writable --dir.") from None
    out = {}
    for split in splits:
        name, size, sha = OFFICIAL[split]
        final, part = dest / name, dest / (name + ".part")
        if final.exists():  # never overwritten: a bad file is reported, not replaced
            out[split] = verify_file(final, split)
            continue
        url = BASE_URL + name
        _fetch(url, part, size, timeout, progress)
        got_size = part.stat().st_size
        if got_size < size:
            raise DownloadError(
                f"Download of {url} stopped early: {got_size} of {size} bytes; the "
                f"partial file {part} is kept. Fix: rerun the same command to resume.")
        got_sha = sha256_file(part) if got_size == size else "(not computed)"
        if got_sha != sha:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"The file downloaded from {url} is not the official {name}: expected "
                f"{size} bytes with sha256 {sha}, got {got_size} bytes with sha256 "
                f"{got_sha}. The bad download was deleted. Fix: rerun to download it "
                f"again; if it keeps failing the host serves another file: fetch it "
                f"by hand and run svhn-jax prepare --mat-dir {dest} --no-verify ...")
        os.replace(part, final)
        out[split] = final
    return out


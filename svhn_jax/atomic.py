"""Atomic file writes: a kill at any moment leaves the old file or the new one, whole.

The temporary file lives in the target folder (os.replace is atomic only within one
filesystem) and is flushed to disk before the rename. No JAX here: data.py uses it too,
and must stay quick to import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def write_with(path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a temporary file beside `path`, fsync, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes files private (0600); outputs get the usual rw-r--r-- instead of
        # reading the umask (os.umask can only be read by setting it, a process-wide race).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    return write_with(path, lambda f: f.write(data))


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())

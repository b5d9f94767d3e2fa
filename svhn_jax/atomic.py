"""Atomic file writes: a kill at any moment leaves the old file or the new one, whole.
JSON goes out strict (no NaN or Infinity tokens).

The temporary file lives in the target folder (os.replace is atomic only within one
filesystem) and is flushed to disk before the rename. No JAX here: data.py uses it too,
and must stay quick to import.
"""

from __future__ import annotations

import json
import math
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


def strict_json(obj, indent: int | None = 2) -> str:
    """JSON that every strict reader accepts: NaN and infinities (undefined numbers,
    such as the worst error over zero checks) become null."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # NumPy / JAX scalars
        return _finite(obj.item())
    return obj


def write_json(path, obj) -> Path:
    return write_text(path, strict_json(obj) + "\n")


def make_dir(path, fix: str) -> Path:
    """mkdir -p, or an error that says what to do (`fix`) instead of an OSError."""
    from .errors import SvhnJaxError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SvhnJaxError(f"cannot write to {path} ({e.strerror}); {fix}") from None
    return path

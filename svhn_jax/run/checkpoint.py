"""Checkpoints: pytrees of arrays in an .npz file, written atomically, checksummed,
read back without pickle.

A checkpoint holds the leaves of a pytree under their key paths ("['params'][0]['W']")
plus a JSON metadata record. Reading needs a *template* tree of the same structure (arrays
or jax.ShapeDtypeStruct, built from the run's config), so nothing executable is
ever unpickled.

Writing goes to a temporary file in the same folder, is flushed to disk, and is
then renamed over the old file; the previous checkpoint is kept as `*.prev.npz`.
A kill at any moment therefore leaves either the old or the new checkpoint whole,
and a damaged newest one (bad checksum) falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import jax
import numpy as np

from .. import atomic
from ..errors import DataError


def _flatten(tree):
    """[(name, np.ndarray)] in a fixed order; PRNG keys stored as their raw data."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
    return out


def _digest(named_arrays) -> str:
    h = hashlib.sha256()
    for name, a in named_arrays:
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fingerprint(tree) -> str:
    """sha256 of a pytree's leaves (names, dtypes, shapes, bytes) in a fixed order:
    two runs whose fingerprints match have bit-identical parameters."""
    return _digest(_flatten(tree))


# Kept under these names: runs, tune and the scripts write through them.
atomic_write_bytes = atomic.write_bytes
atomic_write_text = atomic.write_text


def save(path, tree, meta: dict, *, keep_previous: bool = True) -> None:
    """Write tree and meta to `path` (.npz) atomically; the old file becomes *.prev.npz."""
    path = Path(path)
    named = _flatten(tree)
    record = dict(meta, sha256=_digest(named), names=[n for n, _ in named])
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(record).encode(), np.uint8),
             **{f"a{i}": a for i, (_, a) in enumerate(named)})
    # Only a sound checkpoint may become the fallback: a damaged one is written over.
    if keep_previous and path.exists() and _is_sound(path):
        os.replace(path, previous(path))
    atomic_write_bytes(path, buf.getvalue())


def _is_sound(path: Path) -> bool:
    """Whether the file at `path` reads back and matches its own checksum."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            named = [(n, z[f"a{i}"]) for i, n in enumerate(meta["names"])]
        return _digest(named) == meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        return False


def previous(path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _read(path: Path, template):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = [z[f"a{i}"] for i in range(len(meta["names"]))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        raise DataError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    named = list(zip(meta["names"], arrays))
    if _digest(named) != meta.get("sha256"):
        raise DataError(f"checkpoint {path} is damaged: its checksum does not match its contents")
    expected = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
    if meta["names"] != expected:
        raise DataError(f"checkpoint {path} does not fit this run's model: it holds "
                        f"{len(named)} arrays {meta['names'][:3]}..., the config needs "
                        f"{len(expected)} {expected[:3]}...")
    leaves = []
    for (_, a), t in zip(named, jax.tree.leaves(template)):
        if jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key):
            leaves.append(jax.random.wrap_key_data(a))
        else:
            if a.shape != np.shape(t):
                raise DataError(f"checkpoint {path}: an array has shape {a.shape}, "
                                f"the config needs {np.shape(t)}")
            leaves.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(template), leaves), meta


def load(path, template, *, warn=print):
    """(tree, meta) from `path`, or from its *.prev.npz if `path` is damaged.

    Raises DataError when neither holds a good checkpoint.
    """
    path = Path(path)
    try:
        return _read(path, template)
    except DataError as first:
        prev = previous(path)
        if not prev.exists():
            raise
        warn(f"warning: {first}; using the previous checkpoint {prev}")
        return _read(prev, template)

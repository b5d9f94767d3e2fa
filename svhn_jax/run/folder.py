"""A run folder on disk: creating it safely, its config.json, CSV tables, console lines.

    config.json   {"settings": the RunConfig, "derived": what the run computed from its
                  data (fitted preprocessing, split sizes, versions)}

No JAX here: the command line reads run folders before JAX starts.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

from .. import atomic, config
from ..errors import DataError, SvhnJaxError

# What a run, a sweep or lr-find writes; --overwrite removes these (and nothing else).
RUN_FILES = ("config.json", "history.csv", "gradchecks.csv", "metrics.json", "checkpoint*.npz",
             "best.npz", "train_fingerprints.npy", "*.png", "results.csv", "results.json",
             "lr_find.csv", "lr_find.json", "sweep.json")


def check_run_dir(out: Path, *, overwrite: bool) -> None:
    """The errors ensure_run_dir would raise about `out`, without touching it: call it
    before loading data, and ensure_run_dir after, so bad data leave no empty folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SvhnJaxError(f"--out {out} is a file, not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SvhnJaxError(f"--out {out} already exists and is not empty; pass --overwrite "
                           f"to replace it, --resume {out} to continue it, or choose another path")


def ensure_run_dir(out: Path, *, overwrite: bool) -> None:
    """Create `out` (or empty it of a previous run's files with overwrite), and check
    that it is writable."""
    out = Path(out)
    check_run_dir(out, overwrite=overwrite)
    if overwrite and out.is_dir():
        # A stale checkpoint or best.npz must never be resumed or reported as this run's.
        for name in RUN_FILES:
            for f in out.glob(name):
                f.unlink()
        for name in ("tb", "groups"):   # tblog.TB_DIR; a sweep's groups
            shutil.rmtree(out / name, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SvhnJaxError(f"cannot write to --out {out} ({e.strerror}); choose a writable folder")


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def write_config(out: Path, c: config.RunConfig, derived: dict) -> None:
    atomic.write_json(Path(out) / "config.json", {"settings": config.to_json(c), "derived": derived})


def read_run(run) -> tuple[config.RunConfig, dict]:
    """(settings, derived) from a run folder's config.json, or an error saying what is wrong."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise SvhnJaxError(f"{run} is not a run folder (no config.json); pass the --out folder "
                           f"of a svhn-jax train run")
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or not {"settings", "derived"} <= set(obj):
            raise ValueError("not a run configuration with settings and derived blocks")
    except (ValueError, OSError) as e:
        raise DataError(f"{path} is damaged ({e}); start a new run with --out") from None
    return config.from_json(obj["settings"], str(path)), obj["derived"]


def say(msg: str, *, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def read_metrics(run) -> dict:
    """metrics.json of a run folder, {} when the run has not written one yet."""
    path = Path(run) / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (ValueError, OSError):
        return {}

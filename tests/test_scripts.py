"""The run scripts in scripts/, run as subprocesses on 400 real SVHN digits.

Both scripts start together (they are independent), so the module costs about
as long as the slower of the two (the grid: 8 tiny runs, most of it plotting).
compare_grads runs with BatchNorm and step_check's default finite-difference step.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SVHN_8K

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TIMEOUT = 240


def _start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """The first 400 images of the real 8k slice, in a temporary .npz."""
    if not SVHN_8K.exists():
        pytest.skip(f"real SVHN slice not found at {SVHN_8K}")
    with np.load(SVHN_8K) as d:
        X, y = d["X"][:400], d["y"][:400]
    path = tmp_path_factory.mktemp("data") / "tiny400.npz"
    np.savez(path, X=X, y=y)
    return path


@pytest.fixture(scope="module")
def outputs(tiny_npz, tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts")
    grid_out, grads_out = base / "grid", base / "grads"
    procs = {
        "grid": _start("seed_grid.py", "--data", tiny_npz, "--out", grid_out, "--epochs", 1,
                       "--hidden", 8, "--quiet"),
        "grads": _start("compare_grads.py", "--data", tiny_npz, "--out", grads_out, "--steps", 5,
                        "--hidden", 8, "--batchnorm", "before"),
    }
    results = {k: _finish(p) for k, p in procs.items()}
    return {"grid": (results["grid"], grid_out), "grads": (results["grads"], grads_out)}


def test_seed_grid(outputs):
    r, out = outputs["grid"]
    assert r.returncode == 0, r.stderr
    rows = _rows(out / "results.csv")
    assert len(rows) == 8
    assert list(rows[0]) == ["rank", "name", "bn", "lr", "optimizer", "best_val_acc", "best_epoch",
                             "final_train_loss", "final_val_loss", "test_acc", "seconds", "status",
                             "selected"]
    # the full grid, each configuration once
    assert sorted((r["bn"], float(r["lr"]), r["optimizer"]) for r in rows) == sorted(
        (bn, lr, opt) for bn in ("off", "on-before") for lr in (1e-3, 1e-2)
        for opt in ("adam", "momentum"))
    assert {r["status"] for r in rows} <= {"completed", "diverged"}
    # sorted by best validation accuracy, the top row marked
    accs = [float(r["best_val_acc"]) for r in rows if r["best_val_acc"]]
    assert accs == sorted(accs, reverse=True)
    assert [r["selected"] for r in rows].count("True") == 1 and rows[0]["selected"] == "True"
    for row in rows:
        run = out / row["name"]
        for f in ("config.json", "history.csv", "metrics.json", "best.npz", "checkpoint.npz"):
            assert (run / f).exists(), run / f
        if row["status"] == "completed":
            assert 0.0 <= float(row["test_acc"]) <= 1.0
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["results"]) == 8 and doc["selected_by_val"] == rows[0]["name"]
    assert doc["settings"]["preprocess"] == "scale" and doc["settings"]["grayscale"] is False
    for f in ("loss_curves.png", "accuracy_curves.png", "val_overlay.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    assert "val" in r.stdout and "results.csv" in r.stdout and "*" in r.stdout


def test_compare_grads(outputs):
    r, out = outputs["grads"]
    assert r.returncode == 0, r.stderr
    rows = _rows(out / "grad_diffs.csv")
    assert [int(x["step"]) for x in rows] == list(range(5))
    assert list(rows[0]) == ["step", "epoch", "loss", "f32_max_abs_diff", "f32_max_rel_diff",
                             "f32_worst_leaf", "f64_manual_vs_autodiff", "f64_directional_fd",
                             "f64_smooth"]
    for x in rows:
        assert float(x["f64_manual_vs_autodiff"]) <= 1e-10
        assert float(x["f64_directional_fd"]) <= 1e-6
        assert 0.0 <= float(x["f32_max_rel_diff"]) < 1e-3  # rounding, ~1e-6
        assert np.isfinite(float(x["loss"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["steps"] == 5 and summary["fd_eps"] == 1e-5  # step_check's default
    for f in ("step_diffs.png", "gradcheck.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    assert "float64 hand vs jax.grad" in r.stdout and "grad_diffs.csv" in r.stdout


@pytest.mark.parametrize("script", ["seed_grid.py", "compare_grads.py"])
def test_bad_data_is_one_line_exit_3(script, tmp_path):
    out = tmp_path / "out"
    r = _finish(_start(script, "--data", tmp_path / "nonexistent.npz", "--out", out))
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()  # nothing created for a run that cannot start


def test_grid_refuses_non_empty_out(tiny_npz, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = _finish(_start("seed_grid.py", "--data", tiny_npz, "--out", tmp_path))
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_table_with_diverged_config(tmp_path):
    """A diverged configuration: listed after the completed ones, never selected, drawn."""
    grid = _load_script("seed_grid")
    hist = [{"epoch": 1.0, "train_loss": 2.0, "val_loss": 1.9, "train_acc": 0.2, "val_acc": 0.3},
            {"epoch": 2.0, "train_loss": 1.5, "val_loss": 1.6, "train_acc": 0.4, "val_acc": 0.5}]
    g = lambda name, bn: {"name": name, "bn": bn, "lr": 1e-2, "optimizer": "momentum"}
    done = grid.result_row(g("a", "off"), {"best_val_acc": 0.5, "best_epoch": 2, "test_acc": 0.45},
                           hist, 3.0, "completed")
    # diverged in epoch 3 with a higher validation accuracy before it than run "a"
    div = grid.result_row(g("b", "on-before"), {"best_val_acc": 0.6, "best_epoch": 1,
                                                "diverged_at_step": 30},
                          [dict(hist[0], val_acc=0.6, train_loss=3e38)], 1.0, "diverged")
    rows = grid.sort_rows([div, done])
    assert [r["name"] for r in rows] == ["a", "b"] and rows[0]["selected"] and not rows[1]["selected"]
    assert rows[1]["test_acc"] is None
    table = grid.format_table(rows)
    assert "diverged" in table and "3.000e+38" in table and table.splitlines()[2].startswith("*")
    grid.write_results(tmp_path, rows, {"epochs": 2}, 4.0)
    csv_rows = _rows(tmp_path / "results.csv")
    assert [r["status"] for r in csv_rows] == ["completed", "diverged"] and csv_rows[1]["test_acc"] == ""
    assert json.loads((tmp_path / "results.json").read_text())["selected_by_val"] == "a"
    runs = [{"label": "a", "history": hist, "status": "completed"},
            {"label": "b", "history": [], "status": "diverged"}]
    for kind in ("loss", "acc"):
        path = grid.curves_grid(runs, tmp_path / f"{kind}.png", kind)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

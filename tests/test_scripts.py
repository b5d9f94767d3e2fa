"""The run scripts in scripts/, on 400 synthetic SVHN-shaped images written to a
temporary .npz (no learning quality is asserted, so the tests run in any clone).

The two full runs start together as subprocesses (they are independent), so the
module costs about as long as the slower of the two. The error paths run
in-process through each script's main().
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svhn_jax import config
from fake_svhn import synthetic_npz

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TIMEOUT = 240
PNG = b"\x89PNG\r\n\x1a\n"


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


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _strict_json(path: Path):
    def reject(name):
        raise AssertionError(f"{path} holds {name}")
    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return synthetic_npz(tmp_path_factory.mktemp("data"), 400)


@pytest.fixture(scope="module")
def outputs(tiny_npz, tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts")
    grid_out, grads_out = base / "grid", base / "grads"
    procs = {
        "grid": _start("seed_grid.py", "--data", tiny_npz, "--out", grid_out, "--epochs", 1,
                       "--hidden", 8, "--quiet", "--final"),
        "grads": _start("compare_grads.py", "--data", tiny_npz, "--out", grads_out, "--steps", 5,
                        "--hidden", 8, "--batchnorm", "before"),
    }
    return {k: (_finish(p), {"grid": grid_out, "grads": grads_out}[k]) for k, p in procs.items()}


def test_seed_grid(outputs):
    r, out = outputs["grid"]
    assert r.returncode == 0, r.stderr
    rows = _rows(out / "results.csv")
    # the notebook's full grid, each configuration once; lr vmapped: 4 groups of 2
    assert sorted((x["batchnorm"], float(x["lr"]), x["optimizer"]) for x in rows) == sorted(
        itertools.product(("none", "before"), (1e-3, 1e-2), ("adam", "momentum")))
    assert [int(x["rank"]) for x in rows] == list(range(1, 9))
    assert {x["group_size"] for x in rows} == {"2"}
    assert {x["status"] for x in rows} <= {"completed", "diverged"}
    done = [x for x in rows if x["status"] == "completed"]
    assert done == rows[:len(done)]   # diverged ones last
    accs = [float(x["best_val_acc"]) for x in done]
    assert accs == sorted(accs, reverse=True) and all(0 <= a <= 1 for a in accs)

    doc = _strict_json(out / "results.json")
    assert len(doc["results"]) == 8 and doc["groups"] == 4
    top = rows[0]
    assert (doc["best"]["batchnorm"], doc["best"]["lr"], doc["best"]["optimizer"]) == (
        top["batchnorm"], float(top["lr"]), top["optimizer"])
    shared = {k: doc["settings"][k] for k in ("preprocess", "grayscale", "epochs", "hidden",
                                               "schedule", "reg", "batch")}
    assert shared == {"preprocess": "scale", "grayscale": False, "epochs": 1, "hidden": [8],
                      "schedule": "constant", "reg": 0.0, "batch": 64}
    assert not {"batchnorm", "lr", "optimizer"} & set(doc["settings"])   # swept: not shared
    config.from_json({**doc["settings"], **doc["best"]})   # with the chosen values: complete, valid
    for f in ("curves.png", "lr_sweep.png"):
        assert (out / f).read_bytes()[:8] == PNG, f

    # --final: the chosen configuration retrained alone and scored once on test
    final = _strict_json(out / "final" / "config.json")["settings"]
    assert (final["batchnorm"], final["lr"], final["optimizer"]) == (
        top["batchnorm"], float(top["lr"]), top["optimizer"])
    assert {k: final[k] for k in shared} == shared
    metrics = _strict_json(out / "final" / "metrics.json")
    assert metrics["status"] == "completed" and 0 <= metrics["test_acc"] <= 1
    assert doc["final"]["test_acc"] == metrics["test_acc"]
    assert "chosen on validation" in r.stdout and "best_val_acc" in r.stdout
    assert f"test accuracy {metrics['test_acc']:.2%}" in r.stdout


def test_compare_grads(outputs):
    from svhn_jax.nn import stepcheck
    from svhn_jax.nn import gradcheck

    r, out = outputs["grads"]
    assert r.returncode == 0, r.stderr
    rows = _rows(out / "grad_diffs.csv")
    assert [int(x["step"]) for x in rows] == list(range(5))
    assert list(rows[0]) == ["step", "epoch", "loss", "f32_max_abs_diff", "f32_max_rel_diff",
                             "f32_worst_leaf", "f64_manual_vs_autodiff", "f64_directional_jvp",
                             "f64_directional_fd", "f64_smooth"]
    # Dense(8) without bias (BatchNorm follows) - BatchNorm - ReLU - Dense(10)
    leaves = {"0.dense.W", "1.batchnorm.gamma", "1.batchnorm.beta", "3.dense.W", "3.dense.b"}
    tol = stepcheck.tolerances(np.float64)   # the in-scan check's measures, in float64
    for x in rows:
        assert float(x["f64_manual_vs_autodiff"]) <= tol["manual_vs_autodiff"] < 1e-12
        assert float(x["f64_directional_jvp"]) <= tol["directional_jvp"]
        assert float(x["f64_directional_fd"]) <= tol["directional_fd"] and x["f64_smooth"] == "True"
        assert 0.0 <= float(x["f32_max_rel_diff"]) < 1e-3  # float32 rounding
        assert np.isfinite(float(x["loss"])) and x["f32_worst_leaf"] in leaves
    summary = _strict_json(out / "summary.json")
    assert summary["ok"] and summary["steps"] == 5 and summary["fd_eps"] == gradcheck.FD_STEP
    assert summary["settings"]["batchnorm"] == "before" and summary["settings"]["hidden"] == [8]
    assert summary["max_f64_manual_vs_autodiff"] == max(float(x["f64_manual_vs_autodiff"])
                                                        for x in rows)
    for f in ("step_diffs.png", "gradcheck.png"):
        assert (out / f).read_bytes()[:8] == PNG, f
    assert "float64 hand vs jax.grad" in r.stdout and "grad_diffs.csv" in r.stdout


def test_bench_sweep_groups():
    """The benchmark's vmapped groups are what a sweep may train at once: within a group
    only vmapped settings differ; together they are the whole grid. (The benchmark
    itself compiles 12 programs, too slow for the suite.)"""
    bench = _script("bench_sweep")
    groups = bench.vmapped_groups(config.make(hidden=(8,), epochs=1))
    assert [len(g) for g in groups] == [2, 2, 2, 2]
    shared = lambda c: {k: v for k, v in config.to_json(c).items() if k not in config.VMAPPED}
    for g in groups:
        assert all(shared(c) == shared(g[0]) for c in g)
    assert len({json.dumps(shared(g[0]), sort_keys=True) for g in groups}) == 4
    assert sorted((c.batchnorm, c.optimizer, c.lr) for g in groups for c in g) == sorted(
        itertools.product(("none", "before"), ("adam", "momentum"), (1e-3, 1e-2)))
    assert {c.hidden for g in groups for c in g} == {(8,)}


def test_compare_grads_summary_fails_on_nan_and_on_each_tolerance():
    """A NaN gradient error anywhere fails the summary, wherever it falls among the
    steps; so does any error over its tolerance (the difference only where smooth)."""
    grads = _script("compare_grads")
    tol = {"manual_vs_autodiff": 1e-13, "directional_jvp": 2e-13, "directional_fd": 6e-5}
    row = lambda step, err, **f64: {"step": step, "loss": 1.0, "f32_max_abs_diff": 0.0,
                                    "f32_max_rel_diff": 0.0, "f32_worst_leaf": "0.dense.W",
                                    "f64_manual_vs_autodiff": err, "f64_directional_jvp": 0.0,
                                    "f64_directional_fd": 0.0, "f64_smooth": True, **f64}
    for errs in ([float("nan"), 1e-16], [1e-16, float("nan")]):
        s = grads.summarize([row(i, e) for i, e in enumerate(errs)], tol)
        assert not s["f64_manual_vs_autodiff_ok"] and not s["ok"]
    assert grads.summarize([row(0, 1e-16)], tol)["ok"]
    assert not grads.summarize([row(0, 2e-13)], tol)["ok"]
    assert grads.summarize([row(0, 0.0, f64_directional_jvp=1.9e-13)], tol)["ok"]
    assert not grads.summarize([row(0, 0.0, f64_directional_jvp=2.1e-13)], tol)["ok"]
    assert not grads.summarize([row(0, 0.0, f64_directional_fd=7e-5)], tol)["ok"]
    s = grads.summarize([row(0, 0.0, f64_directional_fd=7e-5, f64_smooth=False)], tol)
    assert s["ok"] and s["f64_nonsmooth_steps"] == 1


@pytest.mark.parametrize("script", ["seed_grid", "compare_grads"])
def test_bad_data_is_one_line_exit_3(script, tmp_path, capsys):
    out = tmp_path / "out"
    code = _script(script).main(["--data", str(tmp_path / "nonexistent.npz"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "nonexistent.npz" in err
    assert not out.exists()  # nothing created for a run that cannot start


def test_grid_refuses_non_empty_out(tiny_npz, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    code = _script("seed_grid").main(["--data", str(tiny_npz), "--out", str(tmp_path)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_grid_unknown_optimizer_names_the_known_ones(tiny_npz, tmp_path, capsys):
    out = tmp_path / "out"
    code = _script("seed_grid").main(["--data", str(tiny_npz), "--out", str(out),
                                      "--optimizers", "adam,lion"])
    err = capsys.readouterr().err
    assert code == 2 and "'lion'" in err and all(o in err for o in config.OPTIMIZERS), err
    assert not out.exists()

"""scripts/bench_compare.py: its arithmetic on fixed numbers, its errors, and one
tiny comparison of HEAD with the working tree (the report parses, its figures
relate as documented, the temporary worktree is gone afterwards). No timing
assertions: timing is for benchmarks, never pass/fail."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svhn_jax.errors import SvhnJaxError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_compare.py"


def _module():
    spec = importlib.util.spec_from_file_location("_bench_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git_checkout() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0


def test_a_run_is_timed_by_its_epochs_after_the_first():
    bc = _module()
    assert bc.run_seconds([5.0, 1.0, 3.0, 2.0]) == 2.0   # median of 1, 3, 2; 5 (compiling) left out
    assert bc.run_seconds([9.0, 0.5]) == 0.5
    with pytest.raises(SvhnJaxError, match="at least 2 epochs"):
        bc.run_seconds([1.0])


def test_ratios_and_spread():
    bc = _module()
    s = bc.summarise([1.0, 2.0, 4.0], [1.1, 2.0, 3.6])
    assert s["ratios"] == pytest.approx([1.1, 1.0, 0.9])
    assert (s["ratio"], s["ratio_min"], s["ratio_max"]) == pytest.approx((1.0, 0.9, 1.1))
    assert s["spread"] == pytest.approx(0.2)
    assert (s["a_s"], s["b_s"]) == (2.0, 2.0)
    slower = bc.summarise([1.0, 1.0], [1.5, 2.5])
    assert slower["ratio"] == pytest.approx(2.0) and slower["spread"] == pytest.approx(0.5)
    with pytest.raises(SvhnJaxError, match="same number of rounds"):
        bc.summarise([1.0], [1.0, 2.0])


@pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout of the repository")
def test_bad_arguments(capsys):
    bc = _module()
    assert bc.main(["no-such-revision-xyz"]) == 2
    assert "not a commit of this repository" in capsys.readouterr().err
    assert bc.main(["HEAD", "--epochs", "1"]) == 2
    assert "--epochs must be at least 2" in capsys.readouterr().err


@pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout of the repository")
def test_head_against_the_working_tree(tmp_path):
    worktrees = lambda: set(subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT,
                                           capture_output=True, text=True).stdout.splitlines())
    before = worktrees()
    r = subprocess.run([sys.executable, str(SCRIPT), "HEAD", "--n", "600", "--epochs", "2", "--rounds", "1",
                        "--batch", "32", "--json", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["a"].split()[0] == subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                 capture_output=True, text=True).stdout.strip()
    assert rep["b"].startswith("working tree")
    (s,) = rep["batches"].values()
    assert list(rep["batches"]) == ["32"] and len(s["ratios"]) == 1
    assert all(math.isfinite(v) and v > 0 for v in (s["a_s"], s["b_s"], s["ratio"]))
    assert s["ratio"] == pytest.approx(s["b_s"] / s["a_s"]) and s["spread"] == 0.0
    # the temporary worktree is gone again
    assert not [w for w in worktrees() - before if "bench_compare_" in w]

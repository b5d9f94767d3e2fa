"""Run folders as a user meets them: the partition, strict JSON, resuming, what a run
prints while it trains, and files a live run keeps up to date. Synthetic data only,
so these run in a user's clone too."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import svhn_jax
from svhn_jax import atomic, cli, config, data
from svhn_jax.run import progress, parts as rundata, folder as runfolder, launch as runs
from svhn_jax.errors import SvhnJaxError
from fake_svhn import synthetic_npz


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return synthetic_npz(tmp_path_factory.mktemp("data"), 1000)


def small(npz, **kw):
    return config.make(**{**dict(data=str(npz), hidden=[8], epochs=2, batch=50), **kw})


def _strict(path: Path):
    def reject(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=reject)


def test_the_partition_depends_on_split_seed_only(npz):
    parts = {seed: rundata.load_split(small(npz, seed=seed)) for seed in (0, 1)}
    fps = {s: {k: set(data.image_fingerprints(p[k][0]).tolist()) for k in ("train", "val", "test")}
           for s, p in parts.items()}
    assert fps[0] == fps[1]
    other = rundata.load_split(small(npz, split_seed=1))
    assert set(data.image_fingerprints(other["test"][0]).tolist()) != fps[0]["test"]


def test_the_run_records_its_partition_and_overlaps(tmp_path, npz):
    m = runs.train_run(small(npz, seed=5), tmp_path / "r", quiet=True)
    c, derived = runfolder.read_run(tmp_path / "r")
    assert (c.seed, c.split_seed) == (5, 0)
    assert derived["overlap_train_val"] == derived["overlap_train_test"] == 0 == m["overlap_train_test"]
    fps = np.load(tmp_path / "r" / "train_fingerprints.npy")
    assert fps.shape == (derived["n_train"],)


def test_every_json_file_is_strict(tmp_path, npz, capsys):
    """NaN and infinities become null (undefined numbers), everywhere."""
    assert json.loads(atomic.strict_json({"a": float("nan"), "b": [float("inf"), 1.5],
                                          "c": np.float32(2.0)})) == {"a": None, "b": [None, 1.5], "c": 2.0}
    runs.train_run(small(npz, gradcheck_every=7), tmp_path / "run", quiet=True)
    assert cli.main(["sweep", "--data", str(npz), "--out", str(tmp_path / "sweep"), "--hidden", "8",
                     "--epochs", "1", "--batch", "50", "--optimizer", "sgd", "--lr", "1e-2,1e6",
                     "--json"]) == 0
    assert cli.main(["lr-find", "--data", str(npz), "--out", str(tmp_path / "lr"), "--hidden", "8",
                     "--batch", "50", "--steps", "20", "--json"]) == 0
    stdout = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    files = sorted(tmp_path.rglob("*.json"))
    assert {f.name for f in files} >= {"config.json", "metrics.json", "results.json", "lr_find.json"}
    for f in files:
        _strict(f)
    for line in stdout:
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} on stdout"))
    diverged = [r for r in _strict(tmp_path / "sweep" / "results.json")["results"]
                if r["status"] == "diverged"]
    assert diverged and diverged[0]["final_val_loss"] is None
    # each says which release wrote it: a run's (and the sweep's final run's) config.json,
    # the sweep's results.json, lr-find's lr_find.json
    configs = [f for f in files if f.name == "config.json"]
    assert len(configs) == 2 and all(_strict(f)["derived"]["svhn_jax_version"] == svhn_jax.__version__
                                     for f in configs)
    for f in (tmp_path / "sweep" / "results.json", tmp_path / "lr" / "lr_find.json"):
        assert _strict(f)["svhn_jax_version"] == svhn_jax.__version__, f


def test_resuming_a_finished_run_changes_nothing(tmp_path, npz, capsys):
    out = tmp_path / "r"
    runs.train_run(small(npz), out, quiet=True)
    files = lambda: {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    before = files()
    assert cli.main(["train", "--resume", str(out)]) == 0
    captured = capsys.readouterr()
    assert "already completed" in captured.err and "best validation accuracy" in captured.out
    assert files() == before and any(f.parent.name == "tb" for f in before)


def test_a_run_stopped_before_its_first_checkpoint_says_the_command_that_works(tmp_path, npz, capsys):
    out = tmp_path / "r"
    runs.train_run(small(npz), out, quiet=True)
    for f in out.glob("checkpoint*.npz"):
        f.unlink()
    (out / "metrics.json").unlink()             # as if killed during the first epoch
    assert cli.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    command = err.split("start it again with: ")[1].strip().split()
    assert command[:2] == ["svhn-jax", "train"]
    assert cli.main(command[1:] + ["--quiet"]) == 0
    assert _strict(out / "metrics.json")["status"] == "completed"


def _train_cli(npz, out, *extra):
    return subprocess.run([sys.executable, "-m", "svhn_jax.cli", "train", "--data", str(npz),
                           "--out", str(out), "--hidden", "8", "--epochs", "3", "--batch", "50",
                           *extra], capture_output=True, text=True, timeout=300)


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, npz):
    r = _train_cli(npz, tmp_path / "a")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("img/s" in line and "elapsed" in line and "ETA" in line and "[" not in line
               for line in lines)
    quiet = _train_cli(npz, tmp_path / "b", "--quiet", "--json")
    assert quiet.returncode == 0 and "epoch" not in quiet.stderr
    assert json.loads(quiet.stdout)["status"] == "completed"


def test_history_is_written_at_every_epoch_end(tmp_path, npz, monkeypatch):
    """A live run's history.csv already holds every finished epoch (tail -f, pandas)."""
    seen = []
    real = progress.say_epoch

    def spy(*a, **k):
        seen.append(len(list(csv.DictReader((tmp_path / "r" / "history.csv").open()))))
        return real(*a, **k)

    monkeypatch.setattr(progress, "say_epoch", spy)
    runs.train_run(small(npz, epochs=3), tmp_path / "r", quiet=True)
    assert seen == [1, 2, 3]


def test_batch_larger_than_the_training_part(tmp_path, npz):
    """The message says why, and where its suggested batch size comes from."""
    with pytest.raises(SvhnJaxError, match="larger than the training part") as e:
        runs.train_run(small(npz, batch=5000), tmp_path / "r", quiet=True)
    said = re.search(r"\((\d+) images\): not one batch fits; use --batch \1 or less \((\d+) makes "
                     r"4 steps an epoch\)", str(e.value))
    assert said and 650 < int(said[1]) < 750 and int(said[2]) == int(said[1]) // 4   # ~70% of 1,000


def test_a_sweep_checks_every_configuration(tmp_path, npz, capsys):
    assert cli.main(["sweep", "--data", str(npz), "--out", str(tmp_path / "s"), "--hidden", "8",
                     "--epochs", "1", "--batch", "50", "--lr", "1e-3,1e-2", "--gradcheck-every", "4",
                     "--no-final", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    spe = -(-700 // 50)                   # 700 training images of 1000 (0.1 val, 0.2 test)
    for r in results:
        assert r["gradchecks"] == len(range(0, spe, 4)) + 1 and r["gradchecks_failed"] == 0, r   # + the eval-mode check
        assert 0 < r["gradcheck_max_manual_vs_autodiff"] <= r["gradcheck_tolerance"]


def test_train_profile_writes_a_trace_and_leaves_the_run_unchanged(tmp_path, npz):
    plain = runs.train_run(small(npz, epochs=1), tmp_path / "a", quiet=True)
    profiled = runs.train_run(small(npz, epochs=1), tmp_path / "b", quiet=True,
                              profile=tmp_path / "prof")
    assert list((tmp_path / "prof").rglob("*.xplane.pb"))
    assert profiled["params_sha256"] == plain["params_sha256"]

"""Reliability: exact resume after SIGKILL/SIGINT, determinism, and a clear
message with a documented exit code for every kind of bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from svhn_jax.run import checkpoint, launch as runs
from svhn_jax import cli, config
from svhn_jax.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_USAGE
from fake_svhn import synthetic_npz

RUN = ["--hidden", "32", "--batch", "128", "--shift", "2", "--schedule", "cosine", "--seed", "3"]




@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """600 images: enough to train for an epoch in well under a second."""
    return synthetic_npz(tmp_path_factory.mktemp("data"), 600)


@pytest.fixture(scope="module")
def mid_npz(tmp_path_factory):
    """8000 images: epochs long enough (50 steps) to be killed in the middle of one."""
    return synthetic_npz(tmp_path_factory.mktemp("data"), 8000)


def _history(run: Path) -> list[str]:
    """history.csv without its wall-clock columns (seconds, images_per_s)."""
    return [line.rsplit(",", 2)[0] for line in (run / "history.csv").read_text().splitlines()]


def _cli(args):
    return subprocess.Popen([sys.executable, "-m", "svhn_jax.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_mid_epoch_checkpoint(out: Path, proc, timeout=120):
    """Poll until the newest checkpoint lies inside an epoch (not at its end)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with np.load(out / "checkpoint.npz") as z:
                meta = json.loads(bytes(z["__meta__"]).decode())
            if meta["progress"]["sums"]["steps"] > 0:
                return
        except (OSError, KeyError, ValueError, EOFError):
            pass
        time.sleep(0.01)
    pytest.fail(f"no mid-epoch checkpoint appeared; process exit code {proc.poll()}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mid_npz):
    """The uninterrupted run that every interrupted-and-resumed run must match."""
    out = tmp_path_factory.mktemp("ref") / "run"
    args = ["train", "--data", str(mid_npz), "--out", str(out), "--epochs", "6", *RUN]
    assert cli.main(args) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_is_bit_identical(tmp_path, reference, mid_npz, sig):
    """SIGTERM (what a scheduler sends before it takes a machine back) stops a run as
    Ctrl-C does; SIGKILL leaves the last checkpoint."""
    out = tmp_path / "run"
    proc = _cli(["train", "--data", str(mid_npz), "--out", str(out), "--epochs", "6",
                 "--checkpoint-every", "3", *RUN])
    _wait_for_mid_epoch_checkpoint(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:
        assert proc.returncode == EXIT_INTERRUPTED, err
        assert f"svhn-jax train --resume {out}" in err and "Traceback" not in err
        assert f"{signal.Signals(sig).name} received" in err
        assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not list(out.glob(".*.tmp")) or sig == signal.SIGKILL  # a kill may leave a stray temp file
    resumed = _cli(["train", "--resume", str(out), "--json"])
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    m = json.loads(stdout)
    assert m["status"] == "completed"
    assert m["params_sha256"] == reference["params_sha256"]
    assert m["test_acc"] == reference["test_acc"]


def test_same_seed_same_run_and_other_seed_differs(tmp_path, tiny_npz):
    def run(name, seed):
        out = tmp_path / name
        cfg = config.make(data=str(tiny_npz), hidden=[16], epochs=2, batch=32, shift=1, seed=seed)
        m = runs.train_run(cfg, out, quiet=True)
        return m["params_sha256"], _history(out)

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a == b
    assert a[0] != c[0]


def test_damaged_checkpoint_falls_back_to_previous(tmp_path, tiny_npz, capsys):
    out = tmp_path / "run"
    cfg = config.make(data=str(tiny_npz), hidden=[16], epochs=3, batch=32)
    with pytest.raises(runs.Interrupted):
        runs.train_run(cfg.replace(checkpoint_every=4), out, quiet=True, stop_after_steps=10)
    blob = bytearray((out / "checkpoint.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / "checkpoint.npz").write_bytes(bytes(blob))
    m = runs.resume_run(out, quiet=True)
    assert m["status"] == "completed"
    assert "using the previous checkpoint" in capsys.readouterr().err
    ref = runs.train_run(cfg, tmp_path / "ref", quiet=True)
    assert m["params_sha256"] == ref["params_sha256"]


def test_checkpoint_rejects_wrong_model(tmp_path):
    import jax.numpy as jnp
    checkpoint.save(tmp_path / "c.npz", {"w": jnp.ones(3)}, {})
    with pytest.raises(runs.SvhnJaxError, match="does not fit"):
        checkpoint.load(tmp_path / "c.npz", {"v": jnp.ones(3)})


# ----------------------------------------------------------------- bad input


def _bad_npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return p


def _images(n=50, shape=(32, 32, 3), dtype=np.uint8):
    return np.random.default_rng(0).integers(0, 255, (n, *shape)).astype(dtype)


BAD_DATA = {
    "missing path": (lambda t: t / "nope.npz", "does not exist"),
    "folder without .mat": (lambda t: t, "train_32x32.mat"),
    "truncated .mat": (lambda t: _write(t / "m", {"train_32x32.mat": b"MATLAB 5.0" + b"\0" * 50,
                                                   "test_32x32.mat": b"junk"}), ".mat"),
    "corrupt .npz": (lambda t: _write(t, {"x.npz": b"PK\x03\x04garbage"}) / "x.npz", "npz"),
    "npz without X": (lambda t: _bad_npz(t, y=np.zeros(50, int)), "X"),
    "npz without y": (lambda t: _bad_npz(t, X=_images()), "y"),
    "28x28 images": (lambda t: _bad_npz(t, X=_images(shape=(28, 28, 3)), y=np.zeros(50, int)), "32, 32, 3"),
    "grayscale without channel": (lambda t: _bad_npz(t, X=_images(shape=(32, 32)), y=np.zeros(50, int)),
                                  "32, 32, 3"),
    "float images": (lambda t: _bad_npz(t, X=_images(dtype=np.float32), y=np.zeros(50, int)), "uint8"),
    "NaN in images": (lambda t: _bad_npz(t, X=np.full((50, 32, 32, 3), np.nan, np.float32),
                                         y=np.zeros(50, int)), "NaN"),
    "negative labels": (lambda t: _bad_npz(t, X=_images(), y=-np.ones(50, int)), "label"),
    "non-integer labels": (lambda t: _bad_npz(t, X=_images(), y=np.full(50, 0.5)), "label"),
    "labels >= 10": (lambda t: _bad_npz(t, X=_images(), y=np.full(50, 10)), "label"),
    "empty dataset": (lambda t: _bad_npz(t, X=_images(0), y=np.zeros(0, int)), "empty"),
}


def _write(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return folder


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_a_clear_error(tmp_path, capsys, case):
    make, words = BAD_DATA[case]
    path = make(tmp_path)
    code = cli.main(["train", "--data", str(path), "--out", str(tmp_path / "out"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_DATA, err
    assert err.startswith("error: ") and words.lower() in err.lower(), err
    assert len(err.splitlines()) <= 3


BAD_ARGS = {
    "batch larger than training part": (["--batch", "100000"], "larger than the training part"),
    "zero learning rate": (["--lr", "0"], "--lr must be > 0"),
    "negative learning rate": (["--lr", "-1"], "--lr must be > 0"),
    "learning rate -0": (["--lr", "-0"], "--lr must be > 0"),
    "learning rate 1e999": (["--lr", "1e999"], "--lr must be a finite number"),
    "learning rate nan": (["--lr", "nan"], "--lr must be a finite number"),
    "unknown optimizer": (["--optimizer", "adagrad"], "unknown optimizer"),
    "val fraction 0": (["--val-fraction", "0"], "--val-fraction must be > 0 and < 1"),
    "val fraction 1.5": (["--val-fraction", "1.5"], "--val-fraction must be > 0 and < 1"),
    "unknown schedule": (["--schedule", "sometimes"], "unknown schedule"),
    "seed beyond 64 bits": (["--seed", "18446744073709551616"], "--seed must be >= 0 and <= 2147483647"),
    "negative split seed": (["--split-seed", "-1"], "--split-seed must be >= 0"),
    "batch beyond int32": (["--batch", str(2**40)], "--batch must be >= 1 and <= 2147483647"),
    "shift as large as the image": (["--shift", "32"], "--shift must be >= 0 and <= 31"),
    "warm-up without a warm-up schedule": (["--warmup-epochs", "2"], "has no effect with --schedule constant"),
    "strict checks without checks": (["--gradcheck-strict"], "--gradcheck-strict needs checks"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments_are_clear_errors(tmp_path, capsys, tiny_npz, case):
    extra, words = BAD_ARGS[case]
    code = cli.main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "o"), "--epochs", "1", *extra])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize("extra,words", [(["--preset", "fastest"], "invalid choice"),
                                         (["--hidden", "0"], "positive integers"),
                                         (["--hidden", "12,x"], "comma-separated")])
def test_argparse_rejections_exit_2(tmp_path, capsys, tiny_npz, extra, words):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "o"), *extra])
    assert e.value.code == EXIT_USAGE and words in capsys.readouterr().err


def test_out_that_is_a_file_or_unwritable(tmp_path, capsys, tiny_npz):
    f = tmp_path / "file"
    f.write_text("x")
    for out, words in [(f, "is a file"), (f / "sub", "cannot write")]:
        code = cli.main(["train", "--data", str(tiny_npz), "--out", str(out), "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == EXIT_USAGE and words in err, err
    assert f.read_text() == "x"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([
    ["--hidden", "8"], ["--hidden", "0"], ["--hidden", "8,4"], ["--hidden", "-3"], ["--hidden", "abc"],
    ["--batchnorm", "on"], ["--batchnorm", "after"], ["--batchnorm", "sideways"],
    ["--lr", "1e-3"], ["--lr", "0"], ["--lr", "nan"], ["--lr", "1e9"], ["--lr", "x"],
    ["--batch", "1"], ["--batch", "0"], ["--batch", "16"], ["--batch", "99999"],
    ["--optimizer", "sgd"], ["--optimizer", "rmsprop"], ["--optimizer", "nope"],
    ["--schedule", "warmup-cosine"], ["--schedule", "step"], ["--schedule", "??"],
    ["--reg", "-1"], ["--reg", "1e-3"], ["--shift", "40"], ["--shift", "2"],
    ["--val-fraction", "0.99"], ["--val-fraction", "-0.1"], ["--test-fraction", "0.5"],
    ["--preprocess", "channel"], ["--preprocess", "bogus"], ["--no-grayscale"],
    ["--epochs", "0"], ["--grad", "autodiff"], ["--preset", "mission"], ["--seed", "-5"],
    ["--gradcheck-every", "3"], ["--gradcheck-every", "-1"], ["--checkpoint-every", "2"],
    ["--patience", "1"], ["--warmup-epochs", "-1"], ["--bogus-flag"],
    ["--seed", "18446744073709551616"], ["--seed", "-0"], ["--seed", "1e3"],
    ["--epochs", str(2**63)], ["--batch", str(-2**70)], ["--split-seed", str(10**30)],
    ["--gradcheck-every", str(2**64)], ["--synthetic-n", "0"], ["--lr", "1e999"], ["--lr", "-0"],
    ["--lr", "inf"], ["--reg", "nan"], ["--reg", "-0"], ["--reg", "1e999"],
    ["--warmup-epochs", "1e999"], ["--warmup-epochs", "nan"], ["--val-fraction", "nan"],
    ["--test-fraction", "-0"], ["--hidden", str(2**40)], ["--gradcheck-strict"],
]), max_size=5))
def test_random_cli_arguments_never_traceback(tmp_path_factory, tiny_npz, capsys, flags):
    out = tmp_path_factory.mktemp("fuzz") / "o"
    args = ["train", "--data", str(tiny_npz), "--out", str(out), "--epochs", "1",
            "--hidden", "8", "--batch", "64"] + [a for f in flags for a in f]
    if "--epochs" in [f[0] for f in flags] or "--preset" in [f[0] for f in flags]:
        args += ["--epochs", "1"]  # keep presets short
    try:
        code = cli.main(args)
    except SystemExit as e:   # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, EXIT_USAGE, EXIT_DATA, 5), (args, code, err)
    assert "Traceback" not in err
    if code not in (0,):
        assert "error" in err


def test_sweep_bad_input(tmp_path, capsys, tiny_npz):
    cases = [(["--data", str(tmp_path / "none.npz"), "--lr", "1e-3"], EXIT_DATA, "does not exist"),
             (["--data", str(tiny_npz), "--lr", "1e-3,0"], EXIT_USAGE, "--lr must be > 0"),
             (["--data", str(tiny_npz), "--seed", "0,18446744073709551616"], EXIT_USAGE, "--seed must be"),
             (["--data", str(tiny_npz), "--optimizer", "adam,lion"], EXIT_USAGE, "unknown optimizer"),
             (["--data", str(tiny_npz), "--lr", "1e-3:1:cubic:3"], EXIT_USAGE, "range")]
    for i, (extra, code, words) in enumerate(cases):
        assert cli.main(["sweep", "--out", str(tmp_path / f"s{i}"), "--epochs", "1", *extra]) == code
        assert words in capsys.readouterr().err


def test_stop_at_an_epoch_boundary_keeps_that_epoch(tmp_path, tiny_npz):
    """An interrupt that lands exactly at the end of an epoch still evaluates and
    records the epoch; the resumed run's history equals the uninterrupted one."""
    cfg = config.make(data=str(tiny_npz), hidden=[16], epochs=2, batch=32, seed=4)
    ref = runs.train_run(cfg, tmp_path / "ref", quiet=True)
    spe = -(-ref["n_train"] // 32)
    with pytest.raises(runs.Interrupted):
        runs.train_run(cfg, tmp_path / "cut", quiet=True, stop_after_steps=spe)
    m = runs.resume_run(tmp_path / "cut", quiet=True)
    assert _history(tmp_path / "cut") == _history(tmp_path / "ref") and len(_history(tmp_path / "ref")) == 3
    assert (m["params_sha256"], m["best_epoch"], m["test_acc"]) == \
        (ref["params_sha256"], ref["best_epoch"], ref["test_acc"])


def test_overwrite_removes_the_previous_runs_files(tmp_path, tiny_npz):
    out = tmp_path / "run"
    cfg = config.make(data=str(tiny_npz), hidden=[16], epochs=2, batch=32)
    runs.train_run(cfg, out, quiet=True)
    assert (out / "best.npz").exists() and (out / "checkpoint.prev.npz").exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(runs.Diverged):
        runs.train_run(cfg.replace(optimizer="sgd", lr=1e6), out, overwrite=True, quiet=True)
    assert not (out / "best.npz").exists() and not (out / "checkpoint.prev.npz").exists()
    assert (out / "notes.txt").read_text() == "mine"    # only the run's own files go


@pytest.mark.parametrize("args,code,words", [
    (["train", "--warmup-epochs", "inf", "--schedule", "warmup-cosine"], EXIT_USAGE,
     "--warmup-epochs must be a finite number"),
    (["train", "--warmup-epochs", "nan", "--schedule", "warmup-cosine"], EXIT_USAGE,
     "--warmup-epochs must be a finite number"),
    (["gradcheck", "--in-dim", "0"], EXIT_USAGE, "--in-dim must be at least 1"),
    (["gradcheck", "--fd-samples", "-3"], EXIT_USAGE, "--fd-samples at least 0"),
])
def test_more_bad_arguments(tmp_path, tiny_npz, capsys, args, code, words):
    if args[0] == "train":
        args = args + ["--data", str(tiny_npz), "--out", str(tmp_path / "o"), "--epochs", "1"]
    assert cli.main(args) == code
    assert words in capsys.readouterr().err


def test_resume_problems_are_clear(tmp_path, tiny_npz, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tiny_npz), "--out", str(run), "--hidden", "8", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--epochs", "5"]) == EXIT_USAGE
    assert "drop --epochs" in capsys.readouterr().err
    (run / "config.json").write_text("{not json")
    for args in (["train", "--resume", str(run)], ["evaluate", "--run", str(run)]):
        assert cli.main(args) == EXIT_DATA
        assert "config.json is damaged" in capsys.readouterr().err


def test_a_damaged_checkpoint_never_becomes_the_fallback(tmp_path):
    import jax.numpy as jnp
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": jnp.ones(3)}, {"n": 1})
    checkpoint.save(path, {"w": jnp.full(3, 2.0)}, {"n": 2})       # n=1 becomes .prev
    path.write_bytes(path.read_bytes()[:-40])                       # n=2 is damaged
    checkpoint.save(path, {"w": jnp.full(3, 3.0)}, {"n": 3})       # must not replace .prev
    _, prev = checkpoint.load(checkpoint.previous(path), {"w": jnp.ones(3)})
    _, cur = checkpoint.load(path, {"w": jnp.ones(3)})
    assert (prev["n"], cur["n"]) == (1, 3)

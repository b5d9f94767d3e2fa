"""A training run from config to run folder: data, the epoch loop, checkpoints,
outputs. This is what `svhn-jax train` and `svhn-jax evaluate` call.

A run folder holds

    config.json      every setting, the fitted preprocessing and the data split
    history.csv      one row per epoch: losses, accuracies, learning rate, seconds
    gradchecks.csv   per-step gradient-check errors (with --gradcheck-every)
    metrics.json     final numbers, status, params_sha256 fingerprint
    checkpoint.npz   newest state (params, BatchNorm state, optimizer state, step);
                     checkpoint.prev.npz is the one before it
    best.npz         parameters with the best validation accuracy
    *.png            loss, accuracy, gradient checks, confusion matrix, mistakes

Everything is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint, data, train
from .data import preprocess
from .nn import model, optim, stepcheck
from .errors import EXIT_DIVERGED, EXIT_INTERRUPTED, DataError, SvhnJaxError

# Settings of a run, with their defaults. `--preset` replaces some of them;
# explicit flags replace both.
DEFAULTS = {
    "data": "svhn", "data_dir": None, "synthetic_n": 73257,
    "val_fraction": 0.1, "test_fraction": 0.2,   # test_fraction: only for data without a test split
    "preprocess": "image", "grayscale": True,
    "hidden": [128], "batchnorm": "none",
    "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "warmup_epochs": 0.0,
    "reg": 0.0, "batch": 64, "epochs": 10, "shift": 0, "patience": 0,
    "grad": "manual", "seed": 0, "split_seed": None, "train_on_val": False,
    "gradcheck_every": 0, "gradcheck_strict": False, "checkpoint_every": 0,
}

PRESETS = {
    # The seed notebook's network, Dense(128)-ReLU-Dense, with hyperparameters chosen
    # on the validation split of the 8k slice (README, "Measured numbers").
    "mission": {"hidden": [128], "batchnorm": "none", "optimizer": "adam", "lr": 3e-3,
                "schedule": "cosine", "warmup_epochs": 0.0, "reg": 3e-3, "batch": 64, "epochs": 40,
                "preprocess": "image", "grayscale": True, "shift": 2},
    # The best MLP recipe found on validation: wider, BatchNorm, warm-up + cosine, shifts.
    "best": {"hidden": [1024, 512], "batchnorm": "before", "optimizer": "adam", "lr": 1e-3,
             "schedule": "warmup-cosine", "warmup_epochs": 1.0, "reg": 3e-2, "batch": 128,
             "epochs": 60, "preprocess": "image", "grayscale": True, "shift": 2},
}

# Per-step checks, float64. The directional derivative <g, v> along a random unit
# vector is about |g| / sqrt(P) (P = 131k parameters in the mission network), so
# the central difference's rounding, ~1e-16 L / eps, reaches ~1e-6 of it on rare
# steps (max 1.0e-6 over 3,520 checks of a 40-epoch run). Only checks whose
# differences at eps and 2 eps agree within 1e-6 count (stepcheck.step_check),
# and 1e-5 leaves a 10x margin; a wrong backward scores 1e-4 to 1.
TOL_STEP_DIRECTIONAL = 1e-5
TOL_STEP_AUTODIFF = 1e-10     # hand vs jax.grad: both exact, so this is rounding


# What a run, a sweep or lr-find writes; --overwrite removes these (and nothing else).
RUN_FILES = ("config.json", "history.csv", "gradchecks.csv", "metrics.json", "checkpoint*.npz",
             "best.npz", "*.png", "results.csv", "results.json", "lr_find.csv", "lr_find.json")


class Diverged(SvhnJaxError):
    exit_code = EXIT_DIVERGED


class Interrupted(SvhnJaxError):
    exit_code = EXIT_INTERRUPTED


# --------------------------------------------------------------------- config


def make_config(preset: str | None = None, **overrides) -> dict:
    """DEFAULTS, then the preset, then the explicit settings that are not None."""
    if preset is not None and preset not in PRESETS:
        raise SvhnJaxError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = dict(DEFAULTS, **(PRESETS[preset] if preset else {}))
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise SvhnJaxError(f"unknown settings {sorted(unknown)}")
    config.update({k: v for k, v in overrides.items() if v is not None})
    config["preset"] = preset
    config["hidden"] = list(config["hidden"])
    return validate_config(config)


def validate_config(c: dict) -> dict:
    """Every check that can be made before any data is loaded."""
    def bad(msg):
        raise SvhnJaxError(msg)

    if not (isinstance(c["lr"], (int, float)) and math.isfinite(c["lr"]) and c["lr"] > 0):
        bad(f"learning rate must be a positive number, got {c['lr']}; e.g. --lr 1e-3")
    if not (isinstance(c["reg"], (int, float)) and math.isfinite(c["reg"]) and c["reg"] >= 0):
        bad(f"L2 strength must be >= 0, got {c['reg']}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 < c[name] < 1:
            bad(f"{name.replace('_', ' ')} must lie strictly between 0 and 1, got {c[name]}")
    if c["val_fraction"] + c["test_fraction"] >= 1:
        bad("val fraction + test fraction must be below 1, leaving images to train on")
    for name in ("batch", "epochs"):
        if not isinstance(c[name], int) or c[name] < 1:
            bad(f"{name} must be a positive integer, got {c[name]}")
    for name in ("patience", "gradcheck_every", "checkpoint_every", "shift", "seed"):
        if not isinstance(c[name], int) or c[name] < 0:
            bad(f"{name.replace('_', '-')} must be an integer >= 0, got {c[name]}")
    if c.get("split_seed") is not None and (not isinstance(c["split_seed"], int) or c["split_seed"] < 0):
        bad(f"split seed must be an integer >= 0, got {c['split_seed']}")
    if not (isinstance(c["warmup_epochs"], (int, float)) and 0 <= c["warmup_epochs"] < math.inf):
        bad(f"warmup epochs must be a number >= 0, got {c['warmup_epochs']}")
    if c["preprocess"] not in preprocess.MODES:
        bad(f"unknown preprocessing {c['preprocess']!r}; choose one of {', '.join(preprocess.MODES)}")
    model.make_spec(c["hidden"], batchnorm=c["batchnorm"])
    train.check_config(step_config(c, steps_per_epoch=1))
    return c


def read_config(run) -> dict:
    """A run folder's config.json, or a DataError that says what is wrong with it."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise SvhnJaxError(f"{run} is not a run folder (no config.json); pass the --out folder "
                           f"of a svhn-jax train run")
    try:
        c = json.loads(path.read_text())
        if not isinstance(c, dict) or "preprocessing" not in c:
            raise ValueError("not a run configuration")
        return c
    except (ValueError, OSError) as e:
        raise DataError(f"{path} is damaged ({e}); start a new run with --out") from None


def step_config(c: dict, steps_per_epoch: int) -> train.StepConfig:
    """The static part of a config; the schedule's length depends on the data size."""
    total = max(2, c["epochs"] * steps_per_epoch)
    name = c["schedule"]
    if name not in optim.SCHEDULES:
        raise SvhnJaxError(f"unknown schedule {name!r}; choose one of {', '.join(optim.SCHEDULES)}")
    base = name.removeprefix("warmup-")
    opts = {"constant": {}, "cosine": {"total_steps": total},
            "step": {"rate": 0.1, "every": max(1, total // 3)}}[base]
    if name != base:  # at least one warm-up step, and at least one after it
        opts["warmup_steps"] = min(max(1, round(c["warmup_epochs"] * steps_per_epoch)), total - 1)
    return train.StepConfig(
        spec=model.make_spec(c["hidden"], batchnorm=c["batchnorm"]),
        optimizer=c["optimizer"], schedule=(name, tuple(sorted(opts.items()))),
        batch=c["batch"], grad_mode=c["grad"], shift=c["shift"],
        image_shape=(32, 32, 1 if c["grayscale"] else 3))


# ----------------------------------------------------------------------- data


def split_data(c: dict, loaded: dict | None = None) -> dict:
    """{"train", "val", "test"?: (X uint8, y int32)} as the config describes.

    Data with an official test split: its train part is split into train and
    validation (stratified, seeded with split_seed, default the run's seed).
    Data without one (an .npz, synthetic): split into train/validation/test
    the same way. With train_on_val, validation images are trained on too
    (for a final fit after hyperparameters were chosen on validation).
    """
    split_seed = c["seed"] if c.get("split_seed") is None else c["split_seed"]
    if loaded is None:
        data.ensure_available(c["data"], c["data_dir"], download=c.get("download", False))
        loaded = data.load(c["data"], data_dir=c["data_dir"], synthetic_n=c["synthetic_n"],
                           seed=c["seed"])
    if "all" in loaded:
        X, y = loaded["all"]
        f_val, f_test = c["val_fraction"], c["test_fraction"]
        parts = dict(zip(("train", "val", "test"),
                         data.stratified_split(y, (1 - f_val - f_test, f_val, f_test), split_seed)))
    else:
        X, y = loaded["train"]
        parts = dict(zip(("train", "val"),
                         data.stratified_split(y, (1 - c["val_fraction"], c["val_fraction"]), split_seed)))
    if c.get("train_on_val"):
        parts["train"] = np.sort(np.concatenate([parts["train"], parts["val"]]))
    out = {k: (X[i], y[i]) for k, i in parts.items()}
    if "test" in loaded:
        out["test"] = loaded["test"]
    return out


def ensure_run_dir(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SvhnJaxError(f"--out {out} is a file, not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SvhnJaxError(f"--out {out} already exists and is not empty; pass --overwrite "
                           f"to replace it, --resume {out} to continue it, or choose another path")
    if overwrite and out.is_dir():
        # A stale checkpoint or best.npz must never be resumed or reported as this run's.
        for name in RUN_FILES:
            for f in out.glob(name):
                f.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SvhnJaxError(f"cannot write to --out {out} ({e.strerror}); choose a writable folder")


# ----------------------------------------------------------------- the run


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    checkpoint.atomic_write_text(path, buf.getvalue())


def write_json(path: Path, obj) -> None:
    checkpoint.atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


class _SigintFlag:
    """Turns the first Ctrl-C into a flag checked between compiled segments;
    a second one interrupts at once."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def say(msg: str, *, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _bar(done: int, total: int, width: int = 20) -> str:
    k = int(width * done / max(total, 1))
    return "[" + "#" * k + "." * (width - k) + "]"


def train_run(c: dict, out, *, overwrite=False, resume=False, quiet=False,
              stop_after_steps: int | None = None) -> dict:
    """Train as config `c` says, writing the run folder `out`; returns metrics.

    resume=True continues from out/checkpoint.npz with out/config.json.
    stop_after_steps (for tests) simulates an interrupt after that many steps.
    Raises Diverged or Interrupted (after writing metrics and a checkpoint).
    """
    out = Path(out)
    if not resume:
        ensure_run_dir(out, overwrite=overwrite)
    parts = split_data(c)
    X_tr, y_tr = parts["train"]
    n = len(y_tr)
    if resume and n != c["n_train"]:
        raise DataError(f"the data now give {n} training images, the run was started with "
                        f"{c['n_train']}: resume with the same data, or start a new run")
    if c["batch"] > n:
        raise SvhnJaxError(f"batch size {c['batch']} is larger than the training part "
                           f"({n} images); use --batch {max(1, n // 4)} or more data")
    if c["batchnorm"] != "none" and c["batch"] < 2:
        raise SvhnJaxError("BatchNorm needs a batch of at least 2; use --batch 2 or more")
    spe = train.steps_per_epoch(n, c["batch"])
    cfg = step_config(c, spe)
    hp = train.Hyper(jnp.float32(c["lr"]), jnp.float32(c["reg"]))

    if not resume:
        c = dict(c, preprocessing=preprocess.fit(X_tr, mode=c["preprocess"], grayscale=c["grayscale"]),
                 n_train=n, n_val=len(parts["val"][1]),
                 n_test=len(parts["test"][1]) if "test" in parts else 0,
                 jax_version=jax.__version__, backend=jax.default_backend())
        write_json(out / "config.json", c)
    prep = c["preprocessing"]
    X = jnp.asarray(preprocess.apply(X_tr, prep))
    y = jnp.asarray(y_tr, jnp.int32)
    val = train.make_eval_set(preprocess.apply(parts["val"][0], prep), parts["val"][1])
    in_dim = X.shape[1]

    template = jax.eval_shape(lambda: {"state": train.init_state(c["seed"], cfg, in_dim, hp)})
    best_template = {"params": template["state"].params, "bn_state": template["state"].bn_state}
    progress = {"history": [], "gradchecks": [], "best_val_acc": -1.0, "best_epoch": 0,
                "bad_epochs": 0, "epoch_sums": _new_sums(), "seconds": 0.0}
    if resume:
        ckpt = out / "checkpoint.npz"
        if not ckpt.exists() and not checkpoint.previous(ckpt).exists():
            raise SvhnJaxError(f"{out} has no checkpoint to resume from; start a new run with --out")
        tree, meta = checkpoint.load(ckpt, template, warn=lambda m: say(m, quiet=False))
        state, progress = tree["state"], meta["progress"]
        say(f"resuming {out} at step {int(state.step)}", quiet=quiet)
    else:
        state = train.init_state(c["seed"], cfg, in_dim, hp)

    def save_checkpoint():
        checkpoint.save(out / "checkpoint.npz", {"state": state}, {"progress": progress})

    def write_outputs(status: str, extra: dict | None = None) -> dict:
        write_csv(out / "history.csv", progress["history"])
        if progress["gradchecks"]:
            write_csv(out / "gradchecks.csv", progress["gradchecks"])
        metrics = {"status": status, "steps": int(state.step), "epochs_run": len(progress["history"]),
                   "stopped_early": status == "completed" and len(progress["history"]) < c["epochs"],
                   "best_epoch": progress["best_epoch"], "best_val_acc": progress["best_val_acc"],
                   "n_train": c["n_train"], "n_val": c["n_val"], "n_test": c["n_test"],
                   "train_seconds": progress["seconds"],
                   "params_sha256": checkpoint.fingerprint(state.params),
                   **_gradcheck_summary(progress["gradchecks"]), **(extra or {})}
        write_json(out / "metrics.json", metrics)
        return metrics

    total_epochs = c["epochs"]
    start_step = int(state.step)
    with _SigintFlag() as sigint:
        while True:
            epoch, pos = divmod(int(state.step), spe)
            if epoch >= total_epochs or (c["patience"] and progress["bad_epochs"] >= c["patience"]):
                break
            order = train.epoch_order(state.key, epoch, n, c["batch"])
            t0 = time.perf_counter()
            while pos < spe:
                if c["gradcheck_every"] and pos % c["gradcheck_every"] == 0:
                    _step_gradcheck(state, hp, X, y, order, pos, cfg, c, progress, epoch)
                count = _segment_length(pos, spe, c)
                if stop_after_steps is not None:
                    count = min(count, start_step + stop_after_steps - int(state.step))
                state, (ce, correct) = train.run_steps(state, hp, X, y, order, pos, cfg, count)
                ce = np.asarray(ce)
                if not np.all(np.isfinite(ce)):
                    k = int(np.argmin(np.isfinite(ce)))
                    step = int(state.step) - count + k + 1
                    kept = (f"the best parameters so far are kept in {out}/best.npz"
                            if progress["history"] else "no epoch had finished, so nothing was kept")
                    msg = (f"diverged at step {step} (loss={ce[k]}): lower the learning rate "
                           f"(now {c['lr']:g}); {kept}")
                    write_outputs("diverged", {"diverged_at_step": step, "diverged_loss": str(ce[k])})
                    raise Diverged(msg)
                sums, dt = progress["epoch_sums"], time.perf_counter() - t0
                sums["loss"] += float(ce.astype(np.float64).sum())
                sums["correct"] += int(np.asarray(correct).sum())
                sums["steps"] += count
                sums["seen"] += count * c["batch"]
                sums["seconds"] += dt
                progress["seconds"] += dt
                pos += count
                t0 = time.perf_counter()
                stop = sigint.set or (stop_after_steps is not None
                                      and int(state.step) - start_step >= stop_after_steps)
                if stop or (c["checkpoint_every"] and pos < spe):
                    break
            if pos == spe:  # the epoch is complete: evaluate it before anything else
                _end_epoch(state, val, cfg, c, progress, epoch, hp, out, quiet)
            save_checkpoint()
            if stop:
                write_outputs("interrupted")
                raise Interrupted(f"interrupted at step {int(state.step)}; a checkpoint was "
                                  f"written. Resume with: svhn-jax train --resume {out}")

    best, _ = checkpoint.load(out / "best.npz", best_template)
    extra = {"best_params_sha256": checkpoint.fingerprint(best["params"])}
    if "test" in parts:
        X_te, y_te = parts["test"]
        loss, acc, pred = evaluate_on_test(best, X_te, y_te, prep, cfg.spec)
        conf = train.confusion_matrix(y_te, pred)
        extra.update(test_loss=loss, test_acc=acc, test_confusion=conf.tolist())
        _final_plots(out, progress, conf, X_te, y_te, pred)
    else:
        _final_plots(out, progress, None, None, None, None)
    return write_outputs("completed", extra)


def evaluate_on_test(best, X_te, y_te, prep, spec):
    """The one evaluation on test of a run, with its best-validation parameters.
    (A function of its own so that tests can count how often test is touched.)"""
    test = train.make_eval_set(preprocess.apply(X_te, prep), y_te)
    return train.evaluate(best["params"], best["bn_state"], test, spec)


def _segment_length(pos: int, spe: int, c: dict) -> int:
    """Steps until the end of the epoch, the next gradient check or checkpoint.

    Checks and checkpoints fall on multiples of their period counted from the
    start of each epoch, so a run compiles at most three scan lengths (the
    epoch, the period, the epoch's remainder) however long it is.
    """
    count = spe - pos
    for every in (c["gradcheck_every"], c["checkpoint_every"]):
        if every:
            count = min(count, every - pos % every)
    return count


def _step_gradcheck(state, hp, X, y, order, pos, cfg, c, progress, epoch):
    """The per-step check on the batch the next step trains on."""
    step = int(state.step)
    xb, yb = train.get_batch(X, y, order, pos, state.key, state.step, cfg)
    r = stepcheck.step_check(state.params, state.bn_state, xb, yb, cfg.spec, c["reg"],
                             jax.random.fold_in(jax.random.fold_in(state.key, 3), step))
    progress["gradchecks"].append({"step": step, "epoch": epoch + 1, **r})
    # `not (e <= tol)`: a NaN gradient makes the errors NaN, and that must fail too.
    bad = (r["smooth"] and not r["directional_fd"] <= TOL_STEP_DIRECTIONAL) \
        or not r["manual_vs_autodiff"] <= TOL_STEP_AUTODIFF
    if bad:
        msg = (f"gradient check at step {step}: directional finite difference rel error "
               f"{r['directional_fd']:.1e} (tolerance {TOL_STEP_DIRECTIONAL:.0e}), hand vs "
               f"jax.grad {r['manual_vs_autodiff']:.1e} (tolerance {TOL_STEP_AUTODIFF:.0e})")
        if c["gradcheck_strict"]:
            raise SvhnJaxError(msg + "; stopping (--gradcheck-strict)")
        print("warning: " + msg, file=sys.stderr)


def _gradcheck_summary(records: list[dict]) -> dict:
    """Counts and worst errors; the directional error only over smooth checks
    (see stepcheck.step_check: the others prove nothing either way)."""
    if not records:
        return {}
    smooth = [r["directional_fd"] for r in records if r["smooth"]]
    return {"gradchecks": len(records), "gradchecks_nonsmooth": len(records) - len(smooth),
            "gradcheck_max_directional_fd": max(smooth, default=float("nan")),
            "gradcheck_max_manual_vs_autodiff": max(r["manual_vs_autodiff"] for r in records)}


def _end_epoch(state, val, cfg, c, progress, epoch, hp, out, quiet):
    loss, acc, _ = train.evaluate(state.params, state.bn_state, val, cfg.spec)
    s = progress["epoch_sums"]
    row = {"epoch": epoch + 1, "step": int(state.step),
           "train_loss": s["loss"] / max(s["steps"], 1), "train_acc": s["correct"] / max(s["seen"], 1),
           "val_loss": loss, "val_acc": acc, "lr": lr_at(cfg, c["lr"], int(state.step) - 1),
           "seconds": s["seconds"]}
    progress["history"].append(row)
    progress["epoch_sums"] = _new_sums()
    # After train_on_val the validation images were trained on: keep the last epoch.
    if acc > progress["best_val_acc"] or c.get("train_on_val"):
        progress.update(best_val_acc=acc, best_epoch=epoch + 1, bad_epochs=0)
        checkpoint.save(out / "best.npz", {"params": state.params, "bn_state": state.bn_state},
                        {"epoch": epoch + 1, "val_acc": acc}, keep_previous=False)
    else:
        progress["bad_epochs"] += 1
    say(f"epoch {epoch + 1:>3}/{c['epochs']} {_bar(epoch + 1, c['epochs'])} "
              f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%} | "
              f"val loss {loss:.4f} acc {acc:.2%} | {row['seconds']:.1f}s", quiet=quiet)


def _new_sums() -> dict:
    """Running sums of the current epoch's training metrics (kept in checkpoints)."""
    return {"loss": 0.0, "correct": 0, "steps": 0, "seen": 0, "seconds": 0.0}


def lr_at(cfg, lr, step: int) -> float:
    name, options = cfg.schedule
    return float(optim.make_schedule(name, lr, **dict(options))(jnp.int32(max(step, 0))))


def _final_plots(out, progress, conf, X_te, y_te, pred):
    from . import plots
    plots.curves(progress["history"], out / "loss.png", out / "accuracy.png")
    if progress["gradchecks"]:
        plots.gradcheck(progress["gradchecks"], out / "gradchecks.png",
                        tol_fd=TOL_STEP_DIRECTIONAL, tol_autodiff=TOL_STEP_AUTODIFF)
    if conf is not None:
        plots.confusion(conf, out / "confusion.png")
        wrong = np.flatnonzero(pred != y_te)
        plots.misclassified(X_te[wrong], y_te[wrong], pred[wrong], out / "misclassified.png")


# ------------------------------------------------------------------- evaluate


def evaluate_run(run, spec: str | None = None, *, split: str | None = None,
                 data_dir=None) -> dict:
    """Evaluate a run's best parameters on data, with the run's own preprocessing.

    An .npz file is used whole unless `split` names a part of the run's split
    (train/val/test); SVHN (.mat folder or prepared tfds) defaults to its test split.
    """
    run = Path(run)
    c = read_config(run)
    spec = spec or c["data"]
    c = dict(c, data=spec, data_dir=data_dir or c["data_dir"])
    if split is not None and split not in ("train", "val", "test"):
        raise SvhnJaxError(f"--split must be train, val or test, got {split!r}")
    data.ensure_available(spec, c["data_dir"], download=False)
    loaded = data.load(spec, data_dir=c["data_dir"], synthetic_n=c["synthetic_n"], seed=c["seed"])
    if "all" in loaded and split is None:
        X, y = loaded["all"]
    else:
        X, y = split_data(c, loaded)[split or "test"]
    prep = c["preprocessing"]
    cfg = step_config(c, 1)
    params, bn_state = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg.spec,
                                                         preprocess.input_dim(prep)))
    best, _ = checkpoint.load(run / "best.npz", {"params": params, "bn_state": bn_state})
    es = train.make_eval_set(preprocess.apply(X, prep), y)
    loss, acc, pred = train.evaluate(best["params"], best["bn_state"], es, cfg.spec)
    conf = train.confusion_matrix(y, pred)
    per_class = (np.diag(conf) / np.maximum(conf.sum(axis=1), 1)).tolist()
    return {"accuracy": acc, "loss": loss, "n": int(len(y)), "per_class_accuracy": per_class,
            "confusion": conf.tolist(), "data": str(spec), "split": split or ("all" if "all" in loaded else "test")}

"""A training run, from configuration to run folder: the epoch loop, checkpoints, outputs.
This is what `svhn-jax train` calls.

A run folder holds

    config.json      the settings and what the run derived from its data (runfolder)
    history.csv      one row per epoch, rewritten at every epoch's end
    gradchecks.csv   per-step gradient-check errors (with --gradcheck-every)
    metrics.json     final numbers, status, params_sha256 fingerprint
    checkpoint.npz   newest train state and progress; checkpoint.prev.npz the one before
    best.npz         parameters with the best validation accuracy
    train_fingerprints.npy   one fingerprint per training image (evaluate's overlap guard)
    *.png            loss, accuracy, gradient checks, confusion matrix, mistakes

The loop runs compiled segments (`train.run_steps`): whole epochs, cut where a
gradient check or a checkpoint falls. Between segments it only reads scalars, so a
Ctrl-C is honoured at the next segment's end and a resumed run repeats the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import atomic, checkpoint, data, rundata, runfolder, train
from .config import RunConfig
from .data import preprocess
from .errors import EXIT_DIVERGED, EXIT_INTERRUPTED, DataError, SvhnJaxError
from .nn import model, optim, stepcheck
from .runfolder import say

# Per-step checks, float64. The directional derivative <g, v> along a random unit
# vector is about |g| / sqrt(P) (P = 131k parameters in the mission network), so
# the central difference's rounding, ~1e-16 L / eps, reaches ~1e-6 of it on rare
# steps. Only checks whose differences at eps and 2 eps agree within 1e-6 count
# (stepcheck.step_check), and 1e-5 leaves a 10x margin; a wrong backward scores
# 1e-4 to 1.
TOL_STEP_DIRECTIONAL = 1e-5
TOL_STEP_AUTODIFF = 1e-10     # hand vs jax.grad: both exact, so this is rounding


class Diverged(SvhnJaxError):
    exit_code = EXIT_DIVERGED


class Interrupted(SvhnJaxError):
    exit_code = EXIT_INTERRUPTED


class EpochSums(NamedTuple):
    """Running sums of the current epoch's training metrics."""

    loss: float = 0.0
    correct: int = 0
    steps: int = 0
    seen: int = 0
    seconds: float = 0.0


class Progress(NamedTuple):
    """Where a run stands between compiled segments; every checkpoint holds it."""

    history: tuple = ()        # one dict per finished epoch: the rows of history.csv
    gradchecks: tuple = ()     # one dict per per-step check: the rows of gradchecks.csv
    best_val_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0        # epochs since the best one, for early stopping
    sums: EpochSums = EpochSums()
    seconds: float = 0.0       # training time so far, over every session of the run


def _progress_json(p: Progress) -> dict:
    return dict(p._asdict(), history=list(p.history), gradchecks=list(p.gradchecks),
                sums=p.sums._asdict())


def _progress_from_json(d: dict) -> Progress:
    return Progress(**dict(d, history=tuple(d["history"]), gradchecks=tuple(d["gradchecks"]),
                           sums=EpochSums(**d["sums"])))


def step_config(c: RunConfig, steps_per_epoch: int) -> train.StepConfig:
    """The static part of a configuration; the schedule's length depends on the data size."""
    total = max(2, c.epochs * steps_per_epoch)
    base = c.schedule.removeprefix("warmup-")
    opts = {"constant": {}, "cosine": {"total_steps": total},
            "step": {"rate": 0.1, "every": max(1, total // 3)}}[base]
    if c.schedule != base:  # at least one warm-up step, and at least one after it
        opts["warmup_steps"] = min(max(1, round(c.warmup * steps_per_epoch)), total - 1)
    return train.StepConfig(
        spec=model.make_spec(c.hidden, batchnorm=c.batchnorm),
        optimizer=c.optimizer, schedule=(c.schedule, tuple(sorted(opts.items()))),
        batch=c.batch, grad_mode=c.grad, shift=c.shift,
        image_shape=(32, 32, 1 if c.grayscale else 3))


def check_batch(c: RunConfig, n_train: int) -> None:
    if c.batch > n_train:
        raise SvhnJaxError(f"batch size {c.batch} is larger than the training part "
                           f"({n_train} images); use --batch {max(1, n_train // 4)} or more data")


def lr_at(cfg: train.StepConfig, lr, step: int) -> float:
    name, options = cfg.schedule
    return float(optim.make_schedule(name, lr, **dict(options))(jnp.int32(max(step, 0))))


# ----------------------------------------------------------------- entry points


def train_run(c: RunConfig, out, *, overwrite=False, download=False, quiet=False,
              stop_after_steps: int | None = None) -> dict:
    """Train as `c` says into the new run folder `out`; returns the metrics.

    stop_after_steps (for tests) simulates a Ctrl-C after that many steps.
    Raises Diverged or Interrupted after writing metrics and a checkpoint.
    """
    out = Path(out)
    runfolder.check_run_dir(out, overwrite=overwrite)
    parts = rundata.load_split(c, download=download)
    runfolder.ensure_run_dir(out, overwrite=overwrite)
    X_tr = parts["train"][0]
    check_batch(c, len(X_tr))
    fps = data.image_fingerprints(X_tr)
    derived = {"preprocessing": preprocess.fit(X_tr, mode=c.preprocess, grayscale=c.grayscale),
               "n_train": len(X_tr), "n_val": len(parts["val"][1]),
               "n_test": len(parts["test"][1]) if "test" in parts else 0,
               **rundata.split_overlaps(parts, fps),
               "jax_version": jax.__version__, "backend": jax.default_backend()}
    runfolder.write_config(out, c, derived)
    atomic.write_with(out / "train_fingerprints.npy", lambda f: np.save(f, fps))
    return _train(c, derived, parts, out, resume=False, quiet=quiet,
                  stop_after_steps=stop_after_steps)


def resume_run(out, *, quiet=False, stop_after_steps: int | None = None) -> dict:
    """Continue the run in folder `out` from its newest checkpoint, with its own settings.
    A run that already completed is left as it is: its metrics are returned."""
    out = Path(out)
    c, derived = runfolder.read_run(out)
    done = runfolder.read_metrics(out)
    if done.get("status") == "completed":
        say(f"{out} already completed ({done.get('epochs_run')} epochs); nothing to resume",
            quiet=quiet)
        return done
    ckpt = out / "checkpoint.npz"
    if not ckpt.exists() and not checkpoint.previous(ckpt).exists():
        raise SvhnJaxError(f"{out} stopped before its first checkpoint, so there is nothing to "
                           f"resume; start it again with: svhn-jax train --config "
                           f"{out}/config.json --out {out} --overwrite")
    parts = rundata.load_split(c)
    if len(parts["train"][1]) != derived["n_train"]:
        raise DataError(f"the data now give {len(parts['train'][1])} training images, the run "
                        f"was started with {derived['n_train']}: resume with the same data, or "
                        f"start a new run")
    return _train(c, derived, parts, out, resume=True, quiet=quiet,
                  stop_after_steps=stop_after_steps)


# -------------------------------------------------------------------- the loop


def _train(c: RunConfig, derived: dict, parts: dict, out: Path, *, resume: bool, quiet: bool,
           stop_after_steps: int | None) -> dict:
    n, prep = derived["n_train"], derived["preprocessing"]
    spe = train.steps_per_epoch(n, c.batch)
    cfg = step_config(c, spe)
    hp = train.Hyper(jnp.float32(c.lr), jnp.float32(c.reg))
    X = jnp.asarray(preprocess.apply(parts["train"][0], prep))
    y = jnp.asarray(parts["train"][1], jnp.int32)
    val = train.make_eval_set(preprocess.apply(parts["val"][0], prep), parts["val"][1])

    template = jax.eval_shape(lambda: {"state": train.init_state(c.seed, cfg, X.shape[1], hp)})
    if resume:
        tree, meta = checkpoint.load(out / "checkpoint.npz", template,
                                     warn=lambda m: say(m, quiet=False))
        state, progress = tree["state"], _progress_from_json(meta["progress"])
        say(f"resuming {out} at step {int(state.step)}", quiet=quiet)
    else:
        state, progress = train.init_state(c.seed, cfg, X.shape[1], hp), Progress()

    def outputs(status: str, extra: dict | None = None) -> dict:
        return _write_outputs(out, c, derived, state, progress, status, extra or {})

    start_step, wall0 = int(state.step), time.perf_counter()
    with _SigintFlag() as sigint:
        while True:
            epoch, pos = divmod(int(state.step), spe)
            if epoch >= c.epochs or (c.patience and progress.bad_epochs >= c.patience):
                break
            order = train.epoch_order(state.key, epoch, n, c.batch)
            stop = False
            while pos < spe:
                t0 = time.perf_counter()
                if c.gradcheck_every and pos % c.gradcheck_every == 0:
                    progress = _step_gradcheck(state, hp, X, y, order, pos, cfg, c, progress, epoch)
                count = _segment_length(pos, spe, c)
                if stop_after_steps is not None:
                    count = min(count, start_step + stop_after_steps - int(state.step))
                state, (ce, correct) = train.run_steps(state, hp, X, y, order, pos, cfg, count)
                ce = np.asarray(ce)
                if not np.all(np.isfinite(ce)):
                    k = int(np.argmin(np.isfinite(ce)))
                    step = int(state.step) - count + k + 1
                    kept = (f"the best parameters so far are kept in {out}/best.npz"
                            if progress.history else "no epoch had finished, so nothing was kept")
                    outputs("diverged", {"diverged_at_step": step, "diverged_loss": str(ce[k])})
                    raise Diverged(f"diverged at step {step} (loss={ce[k]}): lower the learning "
                                   f"rate (now {c.lr:g}); {kept}")
                dt, s = time.perf_counter() - t0, progress.sums
                progress = progress._replace(seconds=progress.seconds + dt, sums=EpochSums(
                    s.loss + float(ce.astype(np.float64).sum()), s.correct + int(np.sum(correct)),
                    s.steps + count, s.seen + count * c.batch, s.seconds + dt))
                pos += count
                stop = sigint.set or (stop_after_steps is not None
                                      and int(state.step) - start_step >= stop_after_steps)
                if stop or (c.checkpoint_every and pos < spe):
                    break
            if pos == spe:  # the epoch is complete: evaluate it before anything else
                progress = _end_epoch(state, val, cfg, c, progress, epoch, out)
                _say_epoch(c, progress, spe, int(state.step) - start_step,
                           time.perf_counter() - wall0, quiet)
            checkpoint.save(out / "checkpoint.npz", {"state": state},
                            {"progress": _progress_json(progress)})
            if stop:
                outputs("interrupted")
                raise Interrupted(f"interrupted at step {int(state.step)}; a checkpoint was "
                                  f"written. Resume with: svhn-jax train --resume {out}")
    return _finish(c, derived, parts, out, cfg, template, outputs, progress)


def _segment_length(pos: int, spe: int, c: RunConfig) -> int:
    """Steps until the end of the epoch, the next gradient check or checkpoint.

    Checks and checkpoints fall on multiples of their period counted from the
    start of each epoch, so a run compiles at most three scan lengths (the
    epoch, the period, the epoch's remainder) however long it is.
    """
    count = spe - pos
    for every in (c.gradcheck_every, c.checkpoint_every):
        if every:
            count = min(count, every - pos % every)
    return count


def _step_gradcheck(state, hp, X, y, order, pos, cfg, c: RunConfig, progress: Progress,
                    epoch: int) -> Progress:
    """The per-step check on the batch the next step trains on."""
    step = int(state.step)
    xb, yb = train.get_batch(X, y, order, pos, state.key, state.step, cfg)
    r = stepcheck.step_check(state.params, state.bn_state, xb, yb, cfg.spec, c.reg,
                             jax.random.fold_in(jax.random.fold_in(state.key, 3), step))
    # `not (e <= tol)`: a NaN gradient makes the errors NaN, and that must fail too.
    bad = (r["smooth"] and not r["directional_fd"] <= TOL_STEP_DIRECTIONAL) \
        or not r["manual_vs_autodiff"] <= TOL_STEP_AUTODIFF
    if bad:
        msg = (f"gradient check at step {step}: directional finite difference rel error "
               f"{r['directional_fd']:.1e} (tolerance {TOL_STEP_DIRECTIONAL:.0e}), hand vs "
               f"jax.grad {r['manual_vs_autodiff']:.1e} (tolerance {TOL_STEP_AUTODIFF:.0e})")
        if c.gradcheck_strict:
            raise SvhnJaxError(msg + "; stopping (--gradcheck-strict)")
        print("warning: " + msg, file=sys.stderr)
    return progress._replace(gradchecks=progress.gradchecks + ({"step": step, "epoch": epoch + 1, **r},))


def _gradcheck_summary(records) -> dict:
    """Counts and worst errors; the directional error only over smooth checks
    (see stepcheck.step_check: the others prove nothing either way)."""
    if not records:
        return {}
    smooth = [r["directional_fd"] for r in records if r["smooth"]]
    return {"gradchecks": len(records), "gradchecks_nonsmooth": len(records) - len(smooth),
            "gradcheck_max_directional_fd": max(smooth, default=None),
            "gradcheck_max_manual_vs_autodiff": max(r["manual_vs_autodiff"] for r in records)}


def _end_epoch(state, val, cfg, c: RunConfig, progress: Progress, epoch: int, out: Path) -> Progress:
    """Evaluate the finished epoch, keep the best parameters, rewrite history.csv."""
    loss, acc, _ = train.evaluate(state.params, state.bn_state, val, cfg.spec)
    s = progress.sums
    row = {"epoch": epoch + 1, "step": int(state.step),
           "train_loss": s.loss / max(s.steps, 1), "train_acc": s.correct / max(s.seen, 1),
           "val_loss": loss, "val_acc": acc, "lr": lr_at(cfg, c.lr, int(state.step) - 1),
           "seconds": s.seconds, "images_per_s": s.seen / max(s.seconds, 1e-9)}
    progress = progress._replace(history=progress.history + (row,), sums=EpochSums())
    # After train_on_val the validation images were trained on: keep the last epoch.
    if acc > progress.best_val_acc or c.train_on_val:
        progress = progress._replace(best_val_acc=acc, best_epoch=epoch + 1, bad_epochs=0)
        checkpoint.save(out / "best.npz", {"params": state.params, "bn_state": state.bn_state},
                        {"epoch": epoch + 1, "val_acc": acc}, keep_previous=False)
    else:
        progress = progress._replace(bad_epochs=progress.bad_epochs + 1)
    runfolder.write_csv(out / "history.csv", list(progress.history))
    return progress


def _say_epoch(c: RunConfig, progress: Progress, spe: int, steps_here: int, wall: float,
               quiet: bool) -> None:
    """One line per epoch on stderr; a bar in front of it on a terminal."""
    row = progress.history[-1]
    left = (c.epochs - row["epoch"]) * spe
    eta = left * wall / max(steps_here, 1)
    bar = _bar(row["epoch"], c.epochs) + " " if sys.stderr.isatty() else ""
    say(f"epoch {row['epoch']:>3}/{c.epochs} {bar}train loss {row['train_loss']:.4f} acc "
        f"{row['train_acc']:.2%} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%} | "
        f"{row['images_per_s']:,.0f} img/s, elapsed {progress.seconds:.1f} s, ETA {eta:.0f} s",
        quiet=quiet)


def _bar(done: int, total: int, width: int = 20) -> str:
    k = int(width * done / max(total, 1))
    return "[" + "#" * k + "." * (width - k) + "]"


def _finish(c, derived, parts, out, cfg, template, outputs, progress) -> dict:
    """Score the best-validation parameters once on test; final plots and metrics."""
    from . import plots

    state_t = template["state"]
    best, _ = checkpoint.load(out / "best.npz", {"params": state_t.params, "bn_state": state_t.bn_state})
    extra = {"best_params_sha256": checkpoint.fingerprint(best["params"])}
    plots.curves(list(progress.history), out / "loss.png", out / "accuracy.png")
    if progress.gradchecks:
        plots.gradcheck(list(progress.gradchecks), out / "gradchecks.png",
                        tol_fd=TOL_STEP_DIRECTIONAL, tol_autodiff=TOL_STEP_AUTODIFF)
    if "test" in parts:
        X_te, y_te = parts["test"]
        loss, acc, pred = evaluate_on_test(best, X_te, y_te, derived["preprocessing"], cfg.spec)
        conf = train.confusion_matrix(y_te, pred)
        extra.update(test_loss=loss, test_acc=acc, test_confusion=conf.tolist())
        plots.confusion(conf, out / "confusion.png")
        wrong = np.flatnonzero(pred != y_te)
        plots.misclassified(X_te[wrong], y_te[wrong], pred[wrong], out / "misclassified.png")
    return outputs("completed", extra)


def evaluate_on_test(best, X_te, y_te, prep, spec):
    """The one evaluation on test of a run, with its best-validation parameters.
    (A function of its own so that tests can count how often test is touched.)"""
    test = train.make_eval_set(preprocess.apply(X_te, prep), y_te)
    return train.evaluate(best["params"], best["bn_state"], test, spec)


def _write_outputs(out: Path, c: RunConfig, derived: dict, state, progress: Progress,
                   status: str, extra: dict) -> dict:
    runfolder.write_csv(out / "history.csv", list(progress.history))
    if progress.gradchecks:
        runfolder.write_csv(out / "gradchecks.csv", list(progress.gradchecks))
    epochs_run = len(progress.history)
    metrics = {"status": status, "steps": int(state.step), "epochs_run": epochs_run,
               "stopped_early": status == "completed" and epochs_run < c.epochs,
               "best_epoch": progress.best_epoch, "best_val_acc": progress.best_val_acc,
               **{k: derived[k] for k in derived if k.startswith(("n_", "overlap_"))},
               "train_seconds": progress.seconds,
               "params_sha256": checkpoint.fingerprint(state.params),
               **_gradcheck_summary(progress.gradchecks), **extra}
    atomic.write_json(out / "metrics.json", metrics)
    return metrics


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

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

import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import atomic, checkpoint, config, data, parallel, progress, rundata, runfolder, stepconfig, tblog, train
from .config import RunConfig
from .data import preprocess
from .errors import DataError, Diverged, Interrupted, SvhnJaxError  # callers catch runs.Diverged
from .nn import stepcheck
from .progress import Progress
from .runfolder import say



# ----------------------------------------------------------------- entry points


def train_run(c: RunConfig, out, *, overwrite=False, download=False, quiet=False,
              profile=None, stop_after_steps: int | None = None) -> dict:
    """Train as `c` says into the new run folder `out`; returns the metrics.

    profile: a folder for a jax.profiler trace of a few steps after compilation
    (on a copy of the state: the run itself is unchanged).
    stop_after_steps (for tests) simulates a Ctrl-C after that many steps.
    Raises Diverged or Interrupted after writing metrics and a checkpoint.
    """
    if profile and c.ensemble > 1:
        raise SvhnJaxError("--profile traces a single model's steps; drop --profile or --ensemble")
    out = _writable(Path(out))
    runfolder.check_run_dir(out, overwrite=overwrite)
    mesh = make_mesh(c)
    parts, n = _load(c, mesh, download)
    runfolder.ensure_run_dir(out, overwrite=overwrite)
    X_tr = parts["train"][0]
    stepconfig.check_batch(c, n)
    fps, sum_over = data.image_fingerprints(X_tr), None
    if n != len(X_tr):   # this process holds some of the rows: statistics over all of them
        fps, sum_over = parallel.gather_rows(fps, n, mesh), parallel.sum_over_processes
    derived = {"preprocessing": preprocess.fit(X_tr, mode=c.preprocess, grayscale=c.grayscale,
                                               sum_over=sum_over),
               "n_train": n, "n_val": len(parts["val"][1]),
               "n_test": len(parts["test"][1]) if "test" in parts else 0,
               **rundata.split_overlaps(parts, fps),
               "jax_version": jax.__version__, "backend": jax.default_backend()}
    runfolder.write_config(out, c, derived)
    atomic.write_with(out / "train_fingerprints.npy", lambda f: np.save(f, fps))
    return _train(c, derived, parts, out, resume=None, quiet=quiet, profile=profile,
                  stop_after_steps=stop_after_steps)


def _load(c: RunConfig, mesh, download: bool = False) -> tuple[dict, int]:
    """(the run's parts, the training part's size). With several processes each one
    reads only the training rows its devices hold (parallel.local_rows); an ensemble
    replicates the whole set on every device."""
    if jax.process_count() == 1 or c.ensemble > 1:
        parts = rundata.load_split(c, download=download)
        return parts, len(parts["train"][1])
    return rundata.load_split_rows(c, lambda n: parallel.local_rows(n, mesh), download=download)


def _writable(out: Path) -> Path:
    """Where this process writes: the run folder in process 0, a scratch folder in the
    others (they train the same replicated model; one copy of the outputs is enough)."""
    if parallel.is_main_process():
        return out
    import tempfile
    return Path(tempfile.mkdtemp(prefix=f"svhn_jax_process{jax.process_index()}_"))


def resume_run(out, *, quiet=False, devices: str | None = None,
               stop_after_steps: int | None = None) -> dict:
    """Continue the run in folder `out` from its newest checkpoint, with its own settings
    (devices may change: checkpoints hold host arrays). A run that already completed is
    left as it is: its metrics are returned."""
    out = Path(out)
    c, derived = runfolder.read_run(out)
    if devices is not None:
        c = c.replace(devices=devices)
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
    parts, n = _load(c, make_mesh(c))
    if n != derived["n_train"]:
        raise DataError(f"the data now give {n} training images, the run "
                        f"was started with {derived['n_train']}: resume with the same data, or "
                        f"start a new run")
    write = _writable(out)
    if write != out:   # another process: it reads the checkpoint, writes elsewhere
        for name in ("config.json", "checkpoint.npz", "checkpoint.prev.npz", "best.npz"):
            if (out / name).exists():
                (write / name).write_bytes((out / name).read_bytes())
    return _train(c, derived, parts, write, resume=out, quiet=quiet, profile=None,
                  stop_after_steps=stop_after_steps)


# -------------------------------------------------------------------- the loop


class _Run(NamedTuple):
    """What stays fixed while a run trains."""

    c: RunConfig
    derived: dict
    out: Path
    cfg: train.StepConfig
    hp: train.Hyper
    X: Any                 # (n_train, 3072) uint8 on the device (cfg.prep normalises batches)
    y: Any                 # (n_train,) int32
    val: train.EvalSet
    spe: int               # steps per epoch
    tb: Any                # TensorBoard writer, or None
    quiet: bool
    mesh: Any              # the device mesh of data-parallel training, or None


def _train(c: RunConfig, derived: dict, parts: dict, out: Path, *, resume: Path | None,
           quiet: bool, profile, stop_after_steps: int | None) -> dict:
    """resume: the run folder to resume from (None: a new run)."""
    n, prep = derived["n_train"], derived["preprocessing"]
    spe = train.steps_per_epoch(n, c.batch)
    cfg = stepconfig.step_config(c, spe, prep)
    if c.ensemble > 1:   # K seeds trained at once and scored as one model
        from . import ensemble
        return ensemble.train_members(c, derived, parts, out, cfg, resume=resume, quiet=quiet,
                                      stop_after_steps=stop_after_steps)
    hp = stepconfig.hyper(c)
    mesh = make_mesh(c)
    X, y = place_train(parts["train"], n, mesh)
    val = train.make_eval_set(*parts["val"])
    in_dim = preprocess.input_dim(prep)
    template = jax.eval_shape(lambda: {"state": train.init_state(c.seed, cfg, in_dim, hp)})
    quiet = quiet or not parallel.is_main_process()
    if resume:
        tree, meta = checkpoint.load(resume / "checkpoint.npz", template,
                                     warn=lambda m: say(m, quiet=not parallel.is_main_process()))
        state, prog = tree["state"], progress.from_json(meta["progress"])
        say(f"resuming {resume} at step {int(state.step)}", quiet=quiet)
    else:
        state, prog = train.init_state(c.seed, cfg, in_dim, hp), Progress()
    if mesh is not None:
        state, val = parallel.replicate((state, val), mesh)
    if profile:
        from . import profiling
        session = profiling.profile_training(state, hp, X, y, cfg, n, profile)
        say(f"profile of 5 steps: {session} (tensorboard --logdir {profile}, or ui.perfetto.dev)",
            quiet=quiet)
    tb = tblog.open_writer(out / tblog.TB_DIR, start_step=int(state.step),
                           history=prog.history if resume else (),
                           enabled=c.tensorboard and parallel.is_main_process())
    if not resume:
        tblog.log_settings(tb, config.to_json(c))
    run = _Run(c, derived, out, cfg, hp, X, y, val, spe, tb, quiet, mesh)
    try:
        state, prog = _loop(run, state, prog, stop_after_steps)
        return _finish(run, parts, template, state, prog)
    finally:
        tblog.close(tb)


def _loop(run: _Run, state, prog: Progress, stop_after_steps: int | None):
    """Train until the last epoch (or early stopping); returns (state, progress).
    Raises Diverged or Interrupted after writing the outputs."""
    c, spe = run.c, run.spe
    start_step, wall0 = int(state.step), time.perf_counter()
    with progress.SigintFlag() as sigint:
        while True:
            epoch, pos = divmod(int(state.step), spe)
            if epoch >= c.epochs or (c.patience and prog.bad_epochs >= c.patience):
                return state, prog
            order = train.epoch_order(state.key, epoch, run.derived["n_train"], c.batch)
            stop = False
            while pos < spe:
                t0 = time.perf_counter()
                count = _segment_length(pos, spe, c)
                if stop_after_steps is not None:
                    count = min(count, start_step + stop_after_steps - int(state.step))
                state, (ce, correct, *rest) = _run_steps(run, state, order, pos, count)
                if run.cfg.check_every:
                    prog = _judge_checks(run, state, prog, stepcheck.records(rest[0], epoch + 1))
                grads = rest[-1] if run.cfg.keep_grads else None
                ce = np.asarray(ce)
                if not np.all(np.isfinite(ce)):
                    _diverged(run, state, prog, ce, count)
                prog = progress.add_segment(prog, loss_sum=float(ce.astype(np.float64).sum()),
                                            correct=int(np.sum(correct)), steps=count,
                                            seen=count * c.batch, seconds=time.perf_counter() - t0)
                pos += count
                stop = sigint.set or (stop_after_steps is not None
                                      and int(state.step) - start_step >= stop_after_steps)
                if stop or (c.checkpoint_every and pos < spe):
                    break
            if pos == spe:  # the epoch is complete: evaluate it before anything else
                prog = _end_epoch(run, state, prog, epoch, grads)
                progress.say_epoch(prog, c.epochs, c.epochs * spe - int(state.step),
                                   int(state.step) - start_step, time.perf_counter() - wall0,
                                   run.quiet)
            checkpoint.save(run.out / "checkpoint.npz", {"state": state},
                            {"progress": progress.to_json(prog)})
            if stop:
                _write_outputs(run, state, prog, "interrupted")
                raise Interrupted(f"interrupted at step {int(state.step)}; a checkpoint was "
                                  f"written. Resume with: svhn-jax train --resume {run.out}")


def make_mesh(c: RunConfig):
    """The device mesh of a data-parallel run; None on one device in one process,
    which then runs train.run_steps exactly as before meshes existed."""
    if c.devices == "1" and jax.process_count() == 1:
        return None
    mesh = parallel.make_mesh(c.devices)
    parallel.check_batch(c.batch, mesh)
    return mesh


def place_train(train_part, n: int, mesh):
    """The training images (uint8 rows) on the device, or split by rows over the mesh
    (with several processes each one places only its own rows)."""
    X_tr, y_tr = train_part
    if mesh is None:
        return train.put_images(X_tr), jnp.asarray(y_tr, jnp.int32)
    return parallel.shard_rows(X_tr.reshape(len(X_tr), -1), y_tr, mesh, n)


def _run_steps(run: _Run, state, order, pos: int, count: int):
    if run.mesh is None:
        return train.run_steps(state, run.hp, run.X, run.y, order, pos, run.cfg, count)
    return parallel.run_steps(state, run.hp, run.X, run.y, order, pos, run.cfg, count, run.mesh)


def _diverged(run: _Run, state, prog: Progress, ce: np.ndarray, count: int):
    k = int(np.argmin(np.isfinite(ce)))
    step = int(state.step) - count + k + 1
    kept = (f"the best parameters so far are kept in {run.out}/best.npz"
            if prog.history else "no epoch had finished, so nothing was kept")
    _write_outputs(run, state, prog, "diverged", {"diverged_at_step": step, "diverged_loss": str(ce[k])})
    raise Diverged(f"diverged at step {step} (loss={ce[k]}): lower the learning rate (now "
                   f"{run.c.lr:g}); {kept}")


def _segment_length(pos: int, spe: int, c: RunConfig) -> int:
    """Steps until the end of the epoch or the next checkpoint.

    Checkpoints fall on multiples of their period counted from the start of each
    epoch, so a run compiles at most three scan lengths (the epoch, the period,
    the epoch's remainder) however long it is.
    """
    count = spe - pos
    if c.checkpoint_every:
        count = min(count, c.checkpoint_every - pos % c.checkpoint_every)
    return count


def _judge_checks(run: _Run, state, prog: Progress, rows: list[dict]) -> Progress:
    """Record a segment's per-step checks; a failure warns, or under --gradcheck-strict
    stops the run before anything trained after it is evaluated or kept as best."""
    prog = prog._replace(gradchecks=prog.gradchecks + tuple(rows))
    tblog.log_gradchecks(run.tb, rows)
    failed = stepcheck.first_failure(rows)
    if failed is not None:
        if run.c.gradcheck_strict:
            _write_outputs(run, state, prog, "gradcheck_failed",
                           {"gradcheck_failed_at_step": failed["step"]})
            raise SvhnJaxError(stepcheck.message(failed) + "; stopping (--gradcheck-strict)")
        print("warning: " + stepcheck.message(failed), file=sys.stderr)
    return prog


def _end_epoch(run: _Run, state, prog: Progress, epoch: int, grads=None) -> Progress:
    """Evaluate the finished epoch, keep the best parameters, rewrite history.csv, log it."""
    c, step = run.c, int(state.step)
    if run.cfg.check_every:   # the eval-mode pass that evaluate runs, checked before it runs
        prog = _judge_checks(run, state, prog, stepcheck.records(
            train.check_eval(state, run.hp, run.val, run.cfg), epoch + 1, mode="eval"))
    loss, acc, _ = train.evaluate(state.params, state.bn_state, run.val, run.cfg.spec, run.cfg.prep)
    s = prog.sums
    row = {"epoch": epoch + 1, "step": step,
           "train_loss": s.loss / max(s.steps, 1), "train_acc": s.correct / max(s.seen, 1),
           "val_loss": loss, "val_acc": acc, "lr": stepconfig.lr_at(run.cfg, c.lr, step - 1),
           "seconds": s.seconds, "images_per_s": s.seen / max(s.seconds, 1e-9)}
    prog = prog._replace(history=prog.history + (row,), sums=progress.EpochSums())
    # After train_on_val the validation images were trained on: keep the last epoch.
    if acc > prog.best_val_acc or c.train_on_val:
        prog = prog._replace(best_val_acc=acc, best_epoch=epoch + 1, bad_epochs=0)
        checkpoint.save(run.out / "best.npz", {"params": state.params, "bn_state": state.bn_state},
                        {"epoch": epoch + 1, "val_acc": acc}, keep_previous=False)
    else:
        prog = prog._replace(bad_epochs=prog.bad_epochs + 1)
    runfolder.write_csv(run.out / "history.csv", list(prog.history))
    tblog.log_epoch(run.tb, row)
    if c.histograms and (epoch + 1) % c.histograms == 0:
        tblog.log_layers(run.tb, step, run.cfg.spec, state.params, grads)
    return prog


def _finish(run: _Run, parts: dict, template, state, prog: Progress) -> dict:
    """Score the best-validation parameters once on test; final plots and metrics."""
    from . import plots

    out, t = run.out, template["state"]
    best, _ = checkpoint.load(out / "best.npz", {"params": t.params, "bn_state": t.bn_state})
    extra = {"best_params_sha256": checkpoint.fingerprint(best["params"])}
    plots.curves(list(prog.history), out / "loss.png", out / "accuracy.png")
    if prog.gradchecks:
        tol = stepcheck.tolerance()
        plots.gradcheck(list(prog.gradchecks), out / "gradchecks.png", tol_fd=tol, tol_autodiff=tol)
    if "test" in parts:
        X_te, y_te = parts["test"]
        loss, acc, pred = evaluate_on_test(best, X_te, y_te, run.cfg)
        conf = train.confusion_matrix(y_te, pred)
        extra.update(test_loss=loss, test_acc=acc, test_confusion=conf.tolist())
        plots.confusion(conf, out / "confusion.png")
        wrong = np.flatnonzero(pred != y_te)
        plots.misclassified(X_te[wrong], y_te[wrong], pred[wrong], out / "misclassified.png")
        for name in ("confusion", "misclassified"):
            tblog.log_image(run.tb, f"images/{name}", out / f"{name}.png", int(state.step))
    return _write_outputs(run, state, prog, "completed", extra)


def evaluate_on_test(best, X_te, y_te, cfg: train.StepConfig):
    """The one evaluation on test of a run, with its best-validation parameters.
    (A function of its own so that tests can count how often test is touched.)"""
    test = train.make_eval_set(X_te, y_te)
    return train.evaluate(best["params"], best["bn_state"], test, cfg.spec, cfg.prep)


def _write_outputs(run: _Run, state, prog: Progress, status: str, extra: dict | None = None) -> dict:
    out, c = run.out, run.c
    runfolder.write_csv(out / "history.csv", list(prog.history))
    if prog.gradchecks:
        runfolder.write_csv(out / "gradchecks.csv", list(prog.gradchecks))
    metrics = {"status": status, "steps": int(state.step), "epochs_run": len(prog.history),
               "stopped_early": status == "completed" and len(prog.history) < c.epochs,
               "best_epoch": prog.best_epoch, "best_val_acc": prog.best_val_acc,
               **{k: v for k, v in run.derived.items() if k.startswith(("n_", "overlap_"))},
               "train_seconds": prog.seconds,
               "params_sha256": checkpoint.fingerprint(state.params),
               **(stepcheck.summary(list(prog.gradchecks)) if prog.gradchecks else {}),
               **(extra or {})}
    atomic.write_json(out / "metrics.json", metrics)
    return metrics

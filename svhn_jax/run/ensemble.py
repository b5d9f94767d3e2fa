"""Ensembles: `svhn-jax train --ensemble K` trains K seeds of one configuration at
once and scores them as one model, by the average of their predicted probabilities.

Member i has seed `seed + i` and is initialised, shuffled and augmented exactly as the
single run with that seed: member 0 trains what --seed alone trains, and the members of
a K-ensemble are the first K of any larger one, up to float32 rounding (a stacked
matrix product may round differently from a single one, and over many epochs such
differences grow, as any rounding difference does). Their train states are stacked
along a leading axis and trained by `train.run_steps_many` (one vmapped, compiled
program per epoch for all of them), spread over the devices along the `models` mesh
axis (models_axis): K members on D devices train about K/D per device.

Scoring. With f_k(x) the logits of member k and p_k = softmax(f_k(x)), the ensemble
predicts p(x) = (1/K) sum_k p_k(x): its prediction is argmax_c p_c(x) and its loss
the cross-entropy of the average, -log p_y(x). In log space, for stability:
log p_c(x) = logsumexp_k(log_softmax(f_k(x))_c) - log K.

Selection. The best epoch is the one where the *ensemble's* validation accuracy is
highest, and best.npz keeps every member's parameters of that epoch (not each member
at its own best epoch): what is kept is then exactly the model that was validated,
one number is chosen on validation instead of K (each member's pick would fit the
noise of the same validation images), and early stopping (--patience) watches the
model that is scored. With train_on_val the last epoch is kept, as in single runs.

The run folder is a single run's (runs.py) with the members stacked: config.json
says `ensemble: K`; checkpoint.npz and best.npz hold (K, ...) arrays (real members
only, whatever the device count); history.csv's val_loss and val_acc
are the ensemble's, train_loss and train_acc the members' mean, member_val_acc the
mean of the members' own validation accuracies; metrics.json adds the seeds and each
member's validation and test accuracy. TensorBoard histograms show member 0.
`svhn-jax evaluate` scores best.npz the same way (`evaluate`).

Runs are cut at epoch ends only: a checkpoint is written and Ctrl-C honoured there
(per-step gradient checks and --checkpoint-every are single-run settings, refused
by config).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import atomic, config
from . import checkpoint, progress, folder as runfolder, tblog
from ..step import models_axis, train
from ..config import RunConfig
from ..data import preprocess
from ..errors import Diverged, Interrupted
from ..nn import model, optim
from .progress import Progress
from .folder import say


def seeds(c: RunConfig) -> list[int]:
    return [c.seed + i for i in range(c.ensemble)]


def init_members(c: RunConfig, cfg: train.StepConfig, in_dim: int) -> train.TrainState:
    """The K members' initial train states, stacked: every leaf (K, ...)."""
    hp = train.Hyper(c.lr, c.reg)
    states = [train.init_state(s, cfg, in_dim, hp) for s in seeds(c)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def stacked(template, k: int):
    """A template of k stacked copies of `template` (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda t: jax.ShapeDtypeStruct((k,) + tuple(t.shape), t.dtype), template)


# ----------------------------------------------------------------- scoring


@partial(jax.jit, static_argnames=("spec", "k", "prep"))
def _score(params, bn_state, es: train.EvalSet, spec, k: int, prep):
    """Over the first k stacked members: mean NLL of the averaged probabilities,
    its accuracy, its predictions (C*B,), and each member's own accuracy (k,)."""
    params, bn_state = jax.tree.map(lambda a: a[:k], (params, bn_state))

    def one(chunk):
        x, y, m = chunk
        x = train.features(x, prep)
        logits = jax.vmap(lambda p, s: model.forward(p, s, x, spec, train=False)[0])(params, bn_state)
        log_avg = jax.scipy.special.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - jnp.log(k)
        nll = -jnp.take_along_axis(log_avg, y[:, None], axis=1)[:, 0]
        pred = jnp.argmax(log_avg, axis=1).astype(jnp.int32)
        member_correct = jnp.sum((jnp.argmax(logits, axis=-1) == y) & m, axis=1)
        return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum((pred == y) & m), pred, member_correct

    nll, correct, pred, member_correct = jax.lax.map(one, es)
    n = es.mask.sum()
    return nll.sum() / n, correct.sum() / n, pred.reshape(-1), member_correct.sum(axis=0) / n


def evaluate(params, bn_state, es: train.EvalSet, spec, k: int | None = None, prep=None):
    """(loss, accuracy, predictions (N,), member accuracies [k]) of the ensemble of the
    first k (default all) members stacked in params/bn_state, BatchNorm in eval mode;
    prep as in train.evaluate."""
    k = jax.tree.leaves(params)[0].shape[0] if k is None else k
    loss, acc, pred, members = _score(params, bn_state, es, spec, k, prep)
    return (float(loss), float(acc), np.asarray(pred)[: int(es.mask.sum())],
            [float(a) for a in np.asarray(members)])


def load_best(run, c: RunConfig, spec, in_dim: int):
    """{"params", "bn_state"} of an ensemble run's best.npz, members stacked."""
    one = jax.eval_shape(lambda: model.init(jax.random.key(0), spec, in_dim))
    template = stacked({"params": one[0], "bn_state": one[1]}, c.ensemble)
    return checkpoint.load(Path(run) / "best.npz", template)[0]


# -------------------------------------------------------------------- training


class _Run(NamedTuple):
    """What stays fixed while an ensemble trains."""

    c: RunConfig
    derived: dict
    out: Path
    cfg: train.StepConfig
    place: models_axis.Placement
    hps: train.Hyper       # (K',) each, sharded like the states
    X: Any
    y: Any
    val: train.EvalSet
    spe: int
    tb: Any
    quiet: bool


def train_members(c: RunConfig, derived: dict, parts: dict, out: Path, cfg: train.StepConfig, *,
                  resume: bool, quiet: bool, stop_after_steps: int | None = None) -> dict:
    """`runs` hands an ensemble run over here once its folder holds config.json
    (or, resuming, a checkpoint). Returns the metrics; raises Diverged or Interrupted
    after writing them. stop_after_steps (tests) stops at the end of the epoch in
    which that many steps were done, as a Ctrl-C would."""
    place = models_axis.placement(c.ensemble)
    X_tr, y_tr = parts["train"]
    X, y, val = models_axis.replicate(
        (train.put_images(X_tr), jnp.asarray(y_tr, jnp.int32),
         train.make_eval_set(*parts["val"])), place)
    in_dim = preprocess.input_dim(derived["preprocessing"])
    template = jax.eval_shape(lambda: {"state": init_members(c, cfg, in_dim)})
    if resume:
        tree, meta = checkpoint.load(out / "checkpoint.npz", template, warn=say)
        states, prog = tree["state"], progress.from_json(meta["progress"])
        say(f"resuming {out} at step {int(states.step[0])}", quiet=quiet)
    else:
        states, prog = init_members(c, cfg, in_dim), Progress()
    k = c.ensemble
    hps = train.Hyper(jnp.full((k,), c.lr, jnp.float32), jnp.full((k,), c.reg, jnp.float32))
    states, hps = models_axis.spread((states, hps), place)
    tb = tblog.open_writer(out / tblog.TB_DIR, start_step=int(states.step[0]),
                           history=prog.history if resume else (), enabled=c.tensorboard)
    if not resume:
        tblog.log_settings(tb, config.to_json(c))
    run = _Run(c, derived, out, cfg, place, hps, X, y, val,
               train.steps_per_epoch(derived["n_train"], c.batch), tb, quiet)
    say(f"ensemble of {k} (seeds {c.seed}..{c.seed + k - 1}) on "
        f"{1 if place.mesh is None else place.mesh.size} device(s)"
        + (f", {place.padded - k} padding slot(s)" if place.padded > k else ""), quiet=quiet)
    try:
        states, prog = _loop(run, states, prog, stop_after_steps)
        return _finish(run, parts, template, states, prog)
    finally:
        tblog.close(tb)


_orders = jax.jit(jax.vmap(train.epoch_order, in_axes=(0, None, None, None)), static_argnums=(2, 3))


def _loop(run: _Run, states, prog: Progress, stop_after_steps: int | None):
    c, spe, k, n = run.c, run.spe, run.c.ensemble, run.derived["n_train"]
    start, wall0 = int(states.step[0]), time.perf_counter()
    with progress.SigintFlag() as sigint:
        for epoch in range(start // spe, c.epochs):
            if c.patience and prog.bad_epochs >= c.patience:
                break
            t0 = time.perf_counter()
            states, (ce, correct) = train.run_steps_many(
                states, run.hps, run.X, run.y, _orders(states.key, epoch, n, c.batch), 0, run.cfg, spe)
            ce, correct = np.asarray(ce)[:k], np.asarray(correct)[:k]
            seconds = time.perf_counter() - t0
            prog = prog._replace(seconds=prog.seconds + seconds)
            if not np.all(np.isfinite(ce)):
                _diverged(run, states, prog, ce, epoch)
            prog = _end_epoch(run, states, prog, epoch, ce, correct, seconds)
            progress.say_epoch(prog, c.epochs, (c.epochs - epoch - 1) * spe,
                               (epoch + 1) * spe - start, time.perf_counter() - wall0, run.quiet)
            checkpoint.save(run.out / "checkpoint.npz", {"state": _real(states, run)},
                            {"progress": progress.to_json(prog)})
            step = (epoch + 1) * spe
            if sigint.set or (stop_after_steps is not None and step - start >= stop_after_steps):
                _write_outputs(run, states, prog, "interrupted")
                raise Interrupted(f"interrupted at step {step}; a checkpoint was written. "
                                  f"Resume with: svhn-jax train --resume {run.out}")
    return states, prog


def _real(states, run: _Run):
    return models_axis.real(states, run.place)


def _diverged(run: _Run, states, prog: Progress, ce: np.ndarray, epoch: int):
    member = int(np.argmin(np.isfinite(ce).all(axis=1)))
    i = int(np.argmin(np.isfinite(ce[member])))
    step = epoch * run.spe + i + 1
    kept = (f"the best ensemble so far is kept in {run.out}/best.npz" if prog.history
            else "no epoch had finished, so nothing was kept")
    _write_outputs(run, states, prog, "diverged",
                   {"diverged_at_step": step, "diverged_member": member,
                    "diverged_loss": str(ce[member, i])})
    raise Diverged(f"member {member} (seed {run.c.seed + member}) diverged at step {step} "
                   f"(loss={ce[member, i]}): lower the learning rate (now {run.c.lr:g}); {kept}")


def _end_epoch(run: _Run, states, prog: Progress, epoch: int, ce, correct, seconds) -> Progress:
    """Score the ensemble on validation, keep the best epoch, rewrite history.csv, log it."""
    c, step = run.c, (epoch + 1) * run.spe
    loss, acc, _, members = evaluate(states.params, states.bn_state, run.val, run.cfg.spec, c.ensemble,
                                     run.cfg.prep)
    name, options = run.cfg.schedule
    row = {"epoch": epoch + 1, "step": step,
           "train_loss": float(ce.astype(np.float64).mean()),
           "train_acc": float(correct.sum() / (c.ensemble * run.spe * c.batch)),
           "val_loss": loss, "val_acc": acc, "member_val_acc": float(np.mean(members)),
           "lr": float(optim.make_schedule(name, c.lr, **dict(options))(jnp.int32(step - 1))),
           "seconds": seconds, "images_per_s": c.ensemble * run.spe * c.batch / max(seconds, 1e-9)}
    prog = prog._replace(history=prog.history + (row,))
    if acc > prog.best_val_acc or c.train_on_val:
        prog = prog._replace(best_val_acc=acc, best_epoch=epoch + 1, bad_epochs=0)
        best = _real({"params": states.params, "bn_state": states.bn_state}, run)
        checkpoint.save(run.out / "best.npz", best,
                        {"epoch": epoch + 1, "val_acc": acc, "member_val_acc": members},
                        keep_previous=False)
    else:
        prog = prog._replace(bad_epochs=prog.bad_epochs + 1)
    runfolder.write_csv(run.out / "history.csv", list(prog.history))
    tblog.log_epoch(run.tb, row)
    if c.histograms and (epoch + 1) % c.histograms == 0:
        tblog.log_layers(run.tb, step, run.cfg.spec, jax.tree.map(lambda a: a[0], states.params))
    return prog


def _finish(run: _Run, parts: dict, template, states, prog: Progress) -> dict:
    """Score the best epoch's ensemble once on test; final plots and metrics."""
    from .. import plots

    out, t = run.out, template["state"]
    best, meta = checkpoint.load(out / "best.npz", {"params": t.params, "bn_state": t.bn_state})
    extra = {"best_params_sha256": checkpoint.fingerprint(best["params"]),
             "member_val_acc": meta["member_val_acc"]}
    plots.curves(list(prog.history), out / "loss.png", out / "accuracy.png")
    if run.tb is not None:   # each member as an HParams session, beside the ensemble's curves
        tblog.log_sweep(out / tblog.TB_DIR / "members", [
            {"config": config.to_json(run.c.replace(seed=run.c.seed + i, ensemble=1)),
             "history": [], "status": "completed", "best_val_acc": v, "final_val_acc": v,
             "final_val_loss": float("nan")} for i, v in enumerate(meta["member_val_acc"])])
    if "test" in parts:
        X_te, y_te = parts["test"]
        es = train.make_eval_set(X_te, y_te)
        loss, acc, pred, members = evaluate(best["params"], best["bn_state"], es, run.cfg.spec,
                                            prep=run.cfg.prep)
        conf = train.confusion_matrix(y_te, pred)
        extra.update(test_loss=loss, test_acc=acc, member_test_acc=members,
                     test_confusion=conf.tolist())
        plots.confusion(conf, out / "confusion.png")
        wrong = np.flatnonzero(pred != y_te)
        plots.misclassified(X_te[wrong], y_te[wrong], pred[wrong], out / "misclassified.png")
        for name in ("confusion", "misclassified"):
            tblog.log_image(run.tb, f"images/{name}", out / f"{name}.png", int(states.step[0]))
    return _write_outputs(run, states, prog, "completed", extra)


def _write_outputs(run: _Run, states, prog: Progress, status: str, extra: dict | None = None) -> dict:
    c = run.c
    runfolder.write_csv(run.out / "history.csv", list(prog.history))
    metrics = {"status": status, "ensemble": c.ensemble, "seeds": seeds(c),
               "devices": 1 if run.place.mesh is None else run.place.mesh.size,
               "steps": int(states.step[0]), "epochs_run": len(prog.history),
               "stopped_early": status == "completed" and len(prog.history) < c.epochs,
               "best_epoch": prog.best_epoch, "best_val_acc": prog.best_val_acc,
               **{k: v for k, v in run.derived.items() if k.startswith(("n_", "overlap_"))},
               "train_seconds": prog.seconds,
               "params_sha256": checkpoint.fingerprint(_real(states.params, run)),
               **(extra or {})}
    atomic.write_json(run.out / "metrics.json", metrics)
    return metrics

"""What a run folder receives from the engine: history.csv and TensorBoard at every
epoch, best.npz when validation improves, and at the end the one evaluation on test,
the figures and metrics.json.

    history.csv      one row per epoch, rewritten at every epoch's end
    gradchecks.csv   per-step gradient-check errors (with --gradcheck-every)
    metrics.json     final numbers, status, params_sha256 fingerprint
    best.npz         parameters with the best validation accuracy (every member's, for
                     an ensemble: the epoch where the *ensemble* scored best, so what is
                     kept is exactly the model that was validated)
    *.png            loss, accuracy, gradient checks, confusion matrix, mistakes

Several processes: every process takes part in gathering parameters spread over them
(mesh.to_host is a collective); process 0 alone writes (Job.keeps).
"""

from __future__ import annotations

import jax
import numpy as np

from .. import atomic, config
from ..nn import stepcheck
from ..step import evaluate as evaluation
from ..step import mesh as meshes
from . import checkpoint, folder, tblog


def _host_params(job, states) -> dict:
    return meshes.to_host(meshes.real({"params": states.params, "bn_state": states.bn_state},
                                      job.place))


def keep_best(job, states, epoch: int, acc: float, members=None) -> None:
    """best.npz: the parameters of this epoch, whose validation accuracy is the best so far."""
    best = _host_params(job, states)
    if job.keeps:
        meta = {"epoch": epoch, "val_acc": acc}
        if members is not None:
            meta["member_val_acc"] = members
        checkpoint.save(job.out / "best.npz", best, meta, keep_previous=False)


def epoch_written(job, states, prog, step: int, grads=None) -> None:
    """history.csv rewritten, the epoch's row and (every --histogram-every epochs) every
    layer's weights and gradients in TensorBoard: model 0's, for stacked models."""
    c = job.c
    if c.tensorboard and c.histograms and prog.history[-1]["epoch"] % c.histograms == 0:
        first = (lambda t: jax.tree.map(lambda a: a[0], t)) if job.place.stacked else (lambda t: t)
        params, grads = meshes.to_host((first(states.params), None if grads is None else first(grads)))
        tblog.log_layers(job.tb, step, job.cfg.spec, params, grads)
    if job.keeps:
        folder.write_csv(job.out / "history.csv", list(prog.history))
        tblog.log_epoch(job.tb, prog.history[-1])


def write(job, states, progs, status: str, step: int, extra: dict | None = None) -> dict:
    """history.csv, gradchecks.csv and metrics.json of a run that ends with `status`
    (completed, interrupted, diverged, gradcheck_failed); returns the metrics. Jobs
    without a run folder keep nothing."""
    if job.out is None:
        return {}
    prog, c = progs[0], job.c
    params = meshes.to_host(meshes.real(states.params, job.place))
    members = {"ensemble": job.k, "seeds": [m.seed for m in job.configs]} if job.k > 1 else {}
    metrics = {"status": status, **members,
               "devices": job.place.devices, "mesh": {"models": job.place.models, "data": job.place.data},
               "steps": step,
               "epochs_run": len(prog.history),
               "stopped_early": status == "completed" and len(prog.history) < c.epochs,
               "best_epoch": prog.best_epoch, "best_val_acc": prog.best_val_acc,
               **{k: v for k, v in job.derived.items() if k.startswith(("n_", "overlap_"))},
               "train_seconds": prog.seconds,
               "params_sha256": checkpoint.fingerprint(params),
               **(stepcheck.summary(list(prog.gradchecks)) if prog.gradchecks else {}),
               **(extra or {})}
    if job.keeps:
        folder.write_csv(job.out / "history.csv", list(prog.history))
        if prog.gradchecks:
            folder.write_csv(job.out / "gradchecks.csv", list(prog.gradchecks))
        atomic.write_json(job.out / "metrics.json", metrics)
    return metrics


def finish(job, parts: dict, states, progs, step: int, template) -> dict:
    """Score the best-validation parameters once on test; final figures and metrics.
    template: the checkpoint template of {"params", "bn_state"} (best.npz's layout)."""
    from .. import plots

    out, prog = job.out, progs[0]
    if not job.keeps:   # another process: the numbers are process 0's to report
        return write(job, states, progs, "completed", step)
    best, meta = checkpoint.load(out / "best.npz", template)
    extra = {"best_params_sha256": checkpoint.fingerprint(best["params"])}
    if "member_val_acc" in meta:
        extra["member_val_acc"] = meta["member_val_acc"]
    plots.curves(list(prog.history), out / "loss.png", out / "accuracy.png")
    if prog.gradchecks:
        tol = stepcheck.tolerance()
        plots.gradcheck(list(prog.gradchecks), out / "gradchecks.png", tol_fd=tol, tol_autodiff=tol)
    if job.k > 1 and job.tb is not None:   # each member as an HParams session
        tblog.log_sweep(out / tblog.TB_DIR / "members", [
            {"config": config.to_json(job.c.replace(seed=m.seed, ensemble=1)), "history": [],
             "status": "completed", "best_val_acc": v, "final_val_acc": v,
             "final_val_loss": float("nan")} for m, v in zip(job.configs, meta["member_val_acc"])])
    if "test" in parts:
        X_te, y_te = parts["test"]
        loss, acc, pred, members = evaluate_on_test(best, X_te, y_te, job)
        conf = evaluation.confusion_matrix(y_te, pred)
        extra.update(test_loss=loss, test_acc=acc, test_confusion=conf.tolist())
        if members is not None:
            extra["member_test_acc"] = members
        plots.confusion(conf, out / "confusion.png")
        wrong = np.flatnonzero(pred != y_te)
        plots.misclassified(X_te[wrong], y_te[wrong], pred[wrong], out / "misclassified.png")
        for name in ("confusion", "misclassified"):
            tblog.log_image(job.tb, f"images/{name}", out / f"{name}.png", step)
    return write(job, states, progs, "completed", step, extra)


def evaluate_on_test(best, X_te, y_te, job):
    """The one evaluation on test of a run, with its best-validation parameters, on
    this process's default device: (loss, accuracy, predictions, member accuracies or
    None). (A function of its own so that tests can count how often test is touched.)"""
    test = evaluation.make_eval_set(X_te, y_te)
    if job.k > 1:
        return evaluation.evaluate_ensemble(best["params"], best["bn_state"], test, job.cfg.spec,
                                            prep=job.cfg.prep, tta=job.c.tta)
    return evaluation.evaluate(best["params"], best["bn_state"], test, job.cfg.spec,
                               job.cfg.prep, job.c.tta) + (None,)

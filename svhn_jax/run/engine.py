"""The one training engine: K >= 1 models trained together, epoch by epoch, in
compiled segments.

Every run is this loop; what differs is its Job:

    SINGLE      one model (a `svhn-jax train` run): scored, kept and stopped on its own
    ENSEMBLE    K seeds, stacked, scored as one model (their averaged probabilities):
                one validation number, one best epoch, one early stop; a member that
                diverges or fails a strict check stops the ensemble, named
    GROUP       K sweep configurations, stacked, each scored on its own: one that
                diverges or fails its check is marked and the others go on
    RANGE_TEST  one model under a rising learning rate for a fixed number of steps,
                no validation (`svhn-jax lr-find`); a non-finite loss ends it

The loop runs compiled segments (`step.parallel.run_segment`): whole epochs, cut
where a checkpoint (--checkpoint-every) or the end of the job falls. Between
segments it only reads the per-step outputs, so a stop request (Ctrl-C, SIGTERM)
is honoured at the next segment's end, and a resumed run repeats the
uninterrupted one bit for bit. The per-step check, divergence, early stopping,
history rows, best-keeping, checkpoints, TensorBoard and the final outputs all
live here (the run folder's files in `outputs`), for every kind of job.

Each *entry* (a model, or the ensemble) keeps its own `progress.Progress`; a run
folder (SINGLE, ENSEMBLE) has one entry and writes it, a GROUP hands its K
entries back to the sweep.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from . import agree, checkpoint, outputs, progress, tblog
from ..config import RunConfig
from ..errors import Diverged, Interrupted, SvhnJaxError
from ..nn import stepcheck
from ..step import evaluate as evaluation
from ..step import mesh as meshes
from ..step import parallel, settings, train
from .folder import say
from .progress import Progress

SINGLE, ENSEMBLE, GROUP, RANGE_TEST = "single", "ensemble", "group", "range_test"


class Job(NamedTuple):
    """What a run is asked to do; fixed while it trains."""

    kind: str
    configs: tuple            # K RunConfigs, one per model; every static setting is shared
    cfg: train.StepConfig
    place: meshes.Placement
    hps: Any                  # train.Hyper, stacked (K', ...) or one, on the placement
    X: Any                    # training rows on the placement (mesh.shard_rows)
    y: Any
    n_train: int
    val: Any                  # evaluation set on the placement; None: no validation
    out: Path | None = None   # run folder (SINGLE, ENSEMBLE): its outputs; None: none written
    checkpoints: Path | None = None   # folder of checkpoint.npz (the run folder, a sweep group's)
    resume: str = ""          # the command that resumes the job, for the stop message
    derived: dict | None = None   # what the run derived from its data (config.json)
    tb: Any = None            # TensorBoard writer (process 0), or None
    quiet: bool = False
    max_steps: int | None = None          # RANGE_TEST: its length
    stop_after_steps: int | None = None   # tests: a stop request after this many steps

    @property
    def c(self) -> RunConfig:
        return self.configs[0]

    @property
    def k(self) -> int:
        return len(self.configs)

    @property
    def spe(self) -> int:
        return train.steps_per_epoch(self.n_train, self.c.batch)

    @property
    def entries(self) -> list[list[int]]:
        """The models behind each scored entry."""
        return [list(range(self.k))] if self.kind == ENSEMBLE else [[i] for i in range(self.k)]

    @property
    def keeps(self) -> bool:
        """Whether this process writes the run folder (process 0 of a run with one)."""
        from .processes import is_main_process
        return self.out is not None and is_main_process()


class Segment(NamedTuple):
    """A segment's per-step outputs on the host, a leading model axis of K (the padding
    slots dropped): ce, correct (K, count); checks a StepCheck of (K, count) or None;
    grads the last gradient (TensorBoard) or None."""

    ce: np.ndarray
    correct: np.ndarray
    checks: Any
    grads: Any


def _host(job: Job, outs) -> Segment:
    ce, correct, *rest = outs
    checks = rest[0] if job.cfg.check_every else None
    grads = rest[-1] if job.cfg.keep_grads else None
    fix = lambda a: _per_model(job, a)
    return Segment(fix(ce), fix(correct),
                   None if checks is None else stepcheck.StepCheck(*map(fix, checks)), grads)


def _per_model(job: Job, a) -> np.ndarray:
    """An output of K models on the host with a leading model axis of K."""
    return np.asarray(a)[:job.k] if job.place.stacked else np.asarray(a)[None]


def orders(job: Job, epoch: int):
    """The epoch's batch orders on the placement: one model's (L,); stacked models'
    (K', L), slot i with model i mod K's, or one shared (L,) when every model has the
    same seed. From the seeds alone: a state's key is jax.random.key(seed)."""
    make = lambda seed: train.epoch_order(jax.random.key(seed), epoch, job.n_train, job.c.batch)
    seeds = [c.seed for c in job.configs]
    if not job.place.stacked or len(set(seeds)) == 1:
        return meshes.replicate(make(seeds[0]), job.place)
    return meshes.spread(jax.numpy.stack([make(s) for s in seeds]), job.place)


def segment_length(pos: int, spe: int, c: RunConfig) -> int:
    """Steps until the end of the epoch or the next checkpoint.

    Checkpoints fall on multiples of their period counted from the start of each
    epoch, so a run compiles at most three scan lengths (the epoch, the period,
    the epoch's remainder) however long it is.
    """
    count = spe - pos
    if c.checkpoint_every:
        count = min(count, c.checkpoint_every - pos % c.checkpoint_every)
    return count


# -------------------------------------------------------------------- the loop


def run(job: Job, states, progs: tuple, step: int, trace: list | None = None):
    """Train from global step `step` until the last epoch, early stopping, or
    job.max_steps; returns (states, progs, step), every entry still training marked
    completed. trace, when given, receives every segment's losses (K, count).
    Raises Diverged, Interrupted, or SvhnJaxError (a strict check) after writing
    what the job keeps."""
    c, spe = job.c, job.spe
    start, wall0 = step, time.perf_counter()
    with progress.StopFlag() as flag:
        while True:
            epoch, pos = divmod(step, spe)
            if _finished(job, progs, epoch, step):
                return states, tuple(p._replace(status="completed") if p.status == "training"
                                     else p for p in progs), step
            epoch_orders = orders(job, epoch)
            stop, seg = False, None
            while pos < spe:
                t0 = time.perf_counter()
                count = segment_length(pos, spe, c)
                for limit in (job.max_steps, job.stop_after_steps and start + job.stop_after_steps):
                    if limit:
                        count = min(count, limit - step)
                states, outs = parallel.run_segment(states, job.hps, job.X, job.y, epoch_orders, pos,
                                                    cfg=job.cfg, count=count, place=job.place)
                seg = _host(job, outs)
                pos, step = pos + count, step + count
                # every process takes the same decisions: a stop request anywhere stops all
                asked, why = agree.vote("segment", (seg.ce, seg.correct, *(seg.checks or ())),
                                        flag.set, flag.signal)
                if trace is not None:
                    trace.append(seg.ce)
                if seg.checks is not None:
                    progs = _judge_checks(job, states, progs, seg.checks, epoch, step)
                seconds = time.perf_counter() - t0
                progs = _diverged(job, states, progs, seg.ce, step - count)
                progs = _add_segment(job, progs, seg, count, seconds)
                stop = asked or bool(job.stop_after_steps and step - start >= job.stop_after_steps)
                if stop or (c.checkpoint_every and pos < spe) or _ended_early(job, progs, step):
                    break
            if pos == spe and job.val is not None:   # the epoch is complete: score it first
                progs = _end_epoch(job, states, progs, epoch, step, seg.grads)
                if job.kind in (SINGLE, ENSEMBLE):
                    progress.say_epoch(progs[0], c.epochs, c.epochs * spe - step, step - start,
                                       time.perf_counter() - wall0, job.quiet)
            if job.checkpoints is not None:
                save_checkpoint(job, states, progs)
            if stop:
                outputs.write(job, states, progs, "interrupted", step)
                saved = ("a checkpoint was written. Resume with: " + job.resume if job.checkpoints
                         else "nothing is kept: run it again")
                raise Interrupted(f"{why or 'interrupted'} at step {step}; {saved}")


def _ended_early(job: Job, progs, step: int) -> bool:
    """The job's step budget is spent, or no entry is training any more."""
    return ((job.max_steps is not None and step >= job.max_steps)
            or all(p.status != "training" for p in progs))


def _finished(job: Job, progs, epoch: int, step: int) -> bool:
    if _ended_early(job, progs, step) or (job.max_steps is None and epoch >= job.c.epochs):
        return True
    alive = [p for p in progs if p.status == "training"]
    return bool(job.c.patience and all(p.bad_epochs >= job.c.patience for p in alive))


def save_checkpoint(job: Job, states, progs) -> None:
    """The newest state and progress, atomically (every process takes part in reading
    states spread over processes; process 0 writes). One entry's progress is stored as
    a run folder always has; a sweep group's K entries as a list."""
    from .processes import is_main_process

    tree = {"state": meshes.to_host(meshes.real(states, job.place))}
    prog = progress.to_json(progs[0]) if len(progs) == 1 else [progress.to_json(p) for p in progs]
    if is_main_process():
        checkpoint.save(job.checkpoints / "checkpoint.npz", tree, {"progress": prog})


def load_checkpoint(folder: Path, template, k_entries: int):
    """(states, progs, step) from folder/checkpoint.npz (or the previous one)."""
    from .processes import is_main_process

    tree, meta = checkpoint.load(folder / "checkpoint.npz", template,
                                 warn=lambda m: say(m, quiet=not is_main_process()))
    entries = meta["progress"] if isinstance(meta["progress"], list) else [meta["progress"]]
    if len(entries) != k_entries:
        raise SvhnJaxError(f"{folder}/checkpoint.npz holds {len(entries)} entries, this job has "
                           f"{k_entries}")
    states = tree["state"]
    return states, tuple(map(progress.from_json, entries)), int(np.max(np.asarray(states.step)))


def _add_segment(job: Job, progs, seg: Segment, count: int, seconds: float):
    """Each entry's running sums: its members' mean loss per step, their correct counts."""
    out = []
    for p, members in zip(progs, job.entries):
        if p.status != "training":
            out.append(p)
            continue
        loss = seg.ce[members].astype(np.float64).mean(axis=0)
        out.append(progress.add_segment(p, loss_sum=float(loss.sum()),
                                        correct=int(np.sum(seg.correct[members])), steps=count,
                                        seen=len(members) * count * job.c.batch, seconds=seconds))
    return tuple(out)


def _diverged(job: Job, states, progs, ce: np.ndarray, first_step: int):
    """A model whose loss stopped being finite in this segment: a GROUP marks its entry
    and goes on; a RANGE_TEST ends; a SINGLE run or an ENSEMBLE stops, after writing
    its outputs, naming the step (and the member)."""
    finite = np.isfinite(ce)
    bad = [m for m in range(job.k) if not finite[m].all()]
    if not bad:
        return progs
    at = {m: first_step + int(np.argmin(finite[m])) + 1 for m in bad}
    if job.kind in (GROUP, RANGE_TEST):
        return tuple(p._replace(status="diverged", status_step=at[members[0]])
                     if p.status == "training" and members[0] in at else p
                     for p, members in zip(progs, job.entries))
    m = bad[0]
    loss = ce[m, at[m] - first_step - 1]
    step = at[m]
    extra = {"diverged_at_step": step, "diverged_loss": str(loss)}
    who = "diverged"
    if job.kind == ENSEMBLE:
        extra["diverged_member"] = m
        who = f"member {m} (seed {job.configs[m].seed}) diverged"
    kept = (f"the best parameters so far are kept in {job.out}/best.npz" if progs[0].history
            else "no epoch had finished, so nothing was kept")
    outputs.write(job, states, (progs[0]._replace(status="diverged", status_step=step),), "diverged",
                  first_step + len(ce[m]), extra)
    raise Diverged(f"{who} at step {step} (loss={loss}): lower the learning rate (now "
                   f"{job.c.lr:g}); {kept}")


def _judge_checks(job: Job, states, progs, checks, epoch: int, step: int, mode: str = "train"):
    """Record a segment's per-step checks (mode 'train'), or the epoch's eval-mode
    checks ('eval'). A failure: a GROUP marks the configuration (a wrong gradient is
    not a result to choose) and goes on; otherwise a warning, or under
    --gradcheck-strict a stop before anything trained after it is evaluated or kept
    as best."""
    progs = list(progs)
    for e, members in enumerate(job.entries):
        for m in members:
            rows = stepcheck.records(checks, epoch + 1, config=m, mode=mode)
            if job.kind == ENSEMBLE:
                rows = [dict(r, member=m) for r in rows]
            progs[e] = progs[e]._replace(gradchecks=progs[e].gradchecks + tuple(rows))
            if e == 0:
                tblog.log_gradchecks(job.tb, rows)
            failed = stepcheck.first_failure(rows)
            if failed is None or progs[e].status != "training":
                continue
            what = stepcheck.message(failed) + (f" (member {m}, seed {job.configs[m].seed})"
                                                if job.kind == ENSEMBLE else "")
            if job.kind == GROUP:
                say(f"warning: configuration {m + 1} of the group: {what}")
                progs[e] = progs[e]._replace(status="gradcheck_failed", status_step=failed["step"])
            elif job.c.gradcheck_strict:
                outputs.write(job, states, tuple(progs), "gradcheck_failed", step,
                              {"gradcheck_failed_at_step": failed["step"],
                               **({"gradcheck_failed_member": m} if job.kind == ENSEMBLE else {})})
                raise SvhnJaxError(what + "; stopping (--gradcheck-strict)")
            else:
                print("warning: " + what, file=sys.stderr)
    return tuple(progs)


# ---------------------------------------------------------------- epoch end


def scores(job: Job, states) -> list[tuple[float, float, dict]]:
    """(validation loss, accuracy, extra row fields) of every entry, BatchNorm in eval mode."""
    spec, prep, mesh, tta = job.cfg.spec, job.cfg.prep, job.place.mesh, job.c.tta
    if job.kind == ENSEMBLE:
        loss, acc, _, members = evaluation.evaluate_ensemble(
            states.params, states.bn_state, job.val, spec, job.k, prep, mesh, tta)
        return [(loss, acc, {"member_val_acc": float(np.mean(members)), "members": members})]
    if job.place.stacked:
        loss, acc = evaluation.evaluate_many(states.params, states.bn_state, job.val, spec, prep, mesh,
                                             tta)
        return [(float(loss[i]), float(acc[i]), {}) for i in range(job.k)]
    loss, acc, _ = evaluation.evaluate(states.params, states.bn_state, job.val, spec, prep, tta)
    return [(loss, acc, {})]


def _end_epoch(job: Job, states, progs, epoch: int, step: int, grads=None):
    """Score the finished epoch, keep each entry's best, rewrite history.csv, log it."""
    if job.cfg.check_every:   # the eval-mode pass that scoring runs, checked before it runs
        checks = parallel.run_eval_checks(states, job.hps, job.val, cfg=job.cfg, place=job.place)
        progs = _judge_checks(job, states, progs, stepcheck.StepCheck(*(_per_model(job, a) for a in checks)),
                              epoch, step, "eval")
    c, scored = job.c, scores(job, states)
    agree.vote("epoch", ([(loss, acc) for loss, acc, _ in scored],))
    out = []
    for e, ((loss, acc, extra), members, p) in enumerate(zip(scored, job.entries, progs)):
        if p.status != "training":
            out.append(p)
            continue
        if not np.isfinite(loss):
            if job.kind == GROUP:
                out.append(p._replace(status="diverged", status_step=step))
                continue
            outputs.write(job, states, (p._replace(status="diverged", status_step=step),), "diverged",
                          step, {"diverged_at_step": step, "diverged_loss": str(loss)})
            raise Diverged(f"the validation loss is {loss} after epoch {epoch + 1}: lower the "
                           f"learning rate (now {c.lr:g})")
        s = p.sums
        row = {"epoch": epoch + 1, "step": step,
               "train_loss": s.loss / max(s.steps, 1), "train_acc": s.correct / max(s.seen, 1),
               "val_loss": loss, "val_acc": acc,
               **{k: v for k, v in extra.items() if k != "members"},
               "lr": settings.lr_at(job.cfg, job.configs[members[0]].lr, step - 1),
               "seconds": s.seconds, "images_per_s": s.seen / max(s.seconds, 1e-9)}
        p = p._replace(history=p.history + (row,), sums=progress.EpochSums())
        # After train_on_val the validation images were trained on: keep the last epoch.
        if acc > p.best_val_acc or c.train_on_val:
            p = p._replace(best_val_acc=acc, best_epoch=epoch + 1, bad_epochs=0)
            if job.out is not None:
                outputs.keep_best(job, states, epoch + 1, acc, extra.get("members"))
        else:
            p = p._replace(bad_epochs=p.bad_epochs + 1)
        out.append(p)
    if job.out is not None:
        outputs.epoch_written(job, states, out[0], step, grads)
    return tuple(out)

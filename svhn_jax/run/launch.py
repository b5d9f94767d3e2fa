"""A training run, from configuration to run folder: what `svhn-jax train` calls.

    train_run    a new run into a new folder: data, config.json, then the engine
    resume_run   an interrupted run from its newest checkpoint, with its own settings
    load_best    a run's best.npz (one model, or an ensemble's members stacked)

A run folder holds config.json (the settings and what the run derived from its
data: folder), train_fingerprints.npy (evaluate's overlap guard), checkpoint.npz
(newest state and progress; checkpoint.prev.npz the one before) and what the engine
writes through `outputs` (history.csv, gradchecks.csv, metrics.json, best.npz,
figures, tb/).

One model (--ensemble 1) is a SINGLE job; --ensemble K trains the seeds --seed ..
--seed + K - 1 as one ENSEMBLE job: each member is initialised, shuffled and
augmented exactly as the single run with its seed (member 0 trains what --seed alone
trains, up to float32 rounding: a stacked matrix product may round differently from a
single one), and the ensemble is scored by its members' averaged probabilities
(step.evaluate). Both are placed on the devices by step.mesh.placement.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import __version__, atomic, config, data
from ..config import RunConfig
from ..data import preprocess
from ..errors import DataError, Diverged, Interrupted, SvhnJaxError  # callers catch launch.Diverged
from ..nn import model
from ..step import mesh as meshes
from ..step import settings, train
from ..step.evaluate import make_eval_set
from . import agree, checkpoint, engine, folder, outputs, parts as run_parts, processes, progress, tblog
from .folder import say

__all__ = ["train_run", "resume_run", "load_best", "Diverged", "Interrupted"]


def member_configs(c: RunConfig) -> tuple:
    """The models of a run: c itself, or an ensemble's members with seeds c.seed + i."""
    if c.ensemble == 1:
        return (c,)
    return tuple(c.replace(seed=c.seed + i, ensemble=1) for i in range(c.ensemble))


def place(c: RunConfig) -> meshes.Placement:
    return meshes.placement(c.ensemble, c.devices, batch=c.batch, stacked=c.ensemble > 1)


@agree.lost_peers_reported()
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
    out, main = Path(out), processes.is_main_process()
    with agree.together("start"):   # with several processes: one fails, all stop, alike
        if main:
            folder.check_run_dir(out, overwrite=overwrite)
        where = place(c)
        parts, n = _load(c, where, download)
        settings.check_batch(c, n)
        if main:
            folder.ensure_run_dir(out, overwrite=overwrite)
    same_everywhere(c, parts, n, _resume_hint(out))
    X_tr = parts["train"][0]
    fps, sum_over = data.image_fingerprints(X_tr), None
    if n != len(X_tr):   # this process holds some of the rows: statistics over all of them
        fps, sum_over = processes.gather_rows(fps, n, where), processes.sum_over_processes
    derived = {"preprocessing": preprocess.fit(X_tr, mode=c.preprocess, grayscale=c.grayscale,
                                               sum_over=sum_over),
               "n_train": n, "n_val": len(parts["val"][1]),
               "n_test": len(parts["test"][1]) if "test" in parts else 0,
               **run_parts.split_overlaps(parts, fps),
               "jax_version": jax.__version__, "backend": jax.default_backend(),
               "svhn_jax_version": __version__}
    if main:
        folder.write_config(out, c, derived)
        atomic.write_with(out / "train_fingerprints.npy", lambda f: np.save(f, fps))
    return _train(c, derived, parts, out, where, resume=False, quiet=quiet, profile=profile,
                  stop_after_steps=stop_after_steps)


def _load(c: RunConfig, where: meshes.Placement, download: bool = False) -> tuple[dict, int]:
    """(the run's parts, the training part's size). With several processes each one
    reads only the training rows its devices hold (mesh.local_rows)."""
    if jax.process_count() == 1:
        p = run_parts.load_split(c, download=download)
        return p, len(p["train"][1])
    return run_parts.load_split_rows(c, lambda n: meshes.local_rows(n, where), download=download)


@agree.lost_peers_reported()
def resume_run(out, *, quiet=False, devices: str | None = None,
               stop_after_steps: int | None = None) -> dict:
    """Continue the run in folder `out` from its newest checkpoint, with its own settings
    (devices may change: checkpoints hold host arrays). A run that already completed is
    left as it is: its metrics are returned."""
    out = Path(out)
    c, derived = folder.read_run(out)
    if devices is not None:
        c = c.replace(devices=devices)
    done = folder.read_metrics(out)
    if done.get("status") == "completed":
        say(f"{out} already completed ({done.get('epochs_run')} epochs); nothing to resume",
            quiet=quiet)
        return done
    ckpt = out / "checkpoint.npz"
    if not ckpt.exists() and not checkpoint.previous(ckpt).exists():
        raise SvhnJaxError(f"{out} stopped before its first checkpoint, so there is nothing to "
                           f"resume; start it again with: svhn-jax train --config "
                           f"{out}/config.json --out {out} --overwrite")
    with agree.together("resume"):
        where = place(c)
        parts, n = _load(c, where)
        if n != derived["n_train"]:
            raise DataError(f"the data now give {n} training images, the run "
                            f"was started with {derived['n_train']}: resume with the same data, or "
                            f"start a new run")
    same_everywhere(c, parts, n, _resume_hint(out))
    return _train(c, derived, parts, out, where, resume=True, quiet=quiet, profile=None,
                  stop_after_steps=stop_after_steps)


def same_everywhere(c: RunConfig, parts: dict, n: int, hint: str) -> None:
    """Several processes: the same settings (but where each finds its data) and the
    same data (its validation images, which every process loads whole); and from now
    on, a lost process ends the others with `hint` (how to resume)."""
    facts = {k: v for k, v in config.to_json(c).items() if k not in ("data", "data_dir")}
    agree.same("settings", {**facts, "training images": n,
                            "validation images": agree.digest(*parts["val"])})
    agree.set_hint(hint)


def _resume_hint(out: Path) -> str:
    return (f"The newest checkpoint in {out} is intact; resume with: svhn-jax train --resume "
            f"{out} (one process will do, or the processes that are left)")


def initial_states(configs, cfg: train.StepConfig, in_dim: int, stacked: bool):
    """Fresh train states: one, or K stacked along a leading axis (every leaf (K, ...))."""
    states = [train.init_state(m.seed, cfg, in_dim, settings.hyper(m)) for m in configs]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states) if stacked else states[0]


def _train(c: RunConfig, derived: dict, parts: dict, out: Path, where: meshes.Placement, *,
           resume: bool, quiet: bool, profile, stop_after_steps: int | None) -> dict:
    n, prep, main = derived["n_train"], derived["preprocessing"], processes.is_main_process()
    configs, stacked = member_configs(c), where.stacked
    spe = train.steps_per_epoch(n, c.batch)
    cfg = settings.step_config(c, spe, prep, keep_grads=c.tensorboard and c.histograms > 0)
    hp = settings.hypers(configs) if stacked else settings.hyper(c)
    X_tr, y_tr = parts["train"]
    X, y = meshes.shard_rows(X_tr.reshape(len(X_tr), -1), y_tr, where, n)
    in_dim = preprocess.input_dim(prep)
    template = jax.eval_shape(lambda: {"state": initial_states(configs, cfg, in_dim, stacked)})
    quiet = quiet or not main
    if resume:
        states, (prog,), step = engine.load_checkpoint(out, template, 1)
        say(f"resuming {out} at step {step}", quiet=quiet)
    else:
        states, prog, step = initial_states(configs, cfg, in_dim, stacked), progress.Progress(), 0
    if stacked:
        say(f"ensemble of {c.ensemble} (seeds {c.seed}..{c.seed + c.ensemble - 1}) on "
            f"{where.describe()}", quiet=quiet)
    if profile:
        from . import profiling
        session = profiling.profile_training(states, hp, X, y, cfg, n, profile)
        say(f"profile of 5 steps: {session} (tensorboard --logdir {profile}, or ui.perfetto.dev)",
            quiet=quiet)
    tb = tblog.open_writer(out / tblog.TB_DIR, start_step=step,
                           history=prog.history if resume else (), enabled=c.tensorboard and main)
    if not resume:
        tblog.log_settings(tb, config.to_json(c))
    job = engine.Job(engine.ENSEMBLE if stacked else engine.SINGLE, configs, cfg, where,
                     meshes.place_models(hp, where), X, y, n,
                     meshes.replicate(make_eval_set(*parts["val"]), where), out=out,
                     checkpoints=out, resume=f"svhn-jax train --resume {out}", derived=derived,
                     tb=tb, quiet=quiet, stop_after_steps=stop_after_steps)
    try:
        states, progs, step = engine.run(job, meshes.place_models(states, where), (prog,), step)
        best = {"params": template["state"].params, "bn_state": template["state"].bn_state}
        return outputs.finish(job, parts, states, progs, step, best)
    finally:
        tblog.close(tb)


def load_best(run, c: RunConfig, spec, in_dim: int):
    """{"params", "bn_state"} of a run's best.npz: one model's, or an ensemble's members
    stacked along a leading axis."""
    one = jax.eval_shape(lambda: model.init(jax.random.key(0), spec, in_dim))
    template = {"params": one[0], "bn_state": one[1]}
    if c.ensemble > 1:
        template = jax.tree.map(lambda t: jax.ShapeDtypeStruct((c.ensemble,) + tuple(t.shape), t.dtype),
                                template)
    return checkpoint.load(Path(run) / "best.npz", template)[0]

"""The learning-rate range test (`svhn-jax lr-find`): a RANGE_TEST job of the engine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import atomic
from ..config import RunConfig
from ..data import preprocess
from ..errors import SvhnJaxError
from ..nn import schedules
from ..nn import stepcheck
from ..run import agree, engine, folder, launch, processes
from ..run import parts as run_parts
from ..run.progress import Progress
from ..step import mesh as meshes
from ..step import settings, train


@agree.lost_peers_reported()
def lr_find(c: RunConfig, out, *, lr_min=1e-7, lr_max=10.0, steps=300, beta=0.98, overwrite=False,
            download=False) -> dict:
    """The learning-rate range test (Smith 2015; fastai's lr_find).

    Trains from fresh parameters while the learning rate grows exponentially
    from lr_min to lr_max over `steps` steps, records the loss of each step and
    its bias-corrected exponential moving average (beta), and stops reading once
    the smoothed loss exceeds 4x its minimum. Suggestion: the learning rate at
    the smoothed minimum divided by 10, a conservative, commonly used rule.

    It is a run like any other (same step, devices, per-step check), with the
    schedule replaced and no validation; a non-finite loss ends it.
    """
    out = Path(out)
    if not (0 < lr_min < lr_max < math.inf) or steps < 10:
        raise SvhnJaxError("lr-find needs 0 < --lr-min < --lr-max and --steps >= 10")
    main = processes.is_main_process()
    with agree.together("start"):
        if main:
            folder.check_run_dir(out, overwrite=overwrite)
        parts = run_parts.load_split(c, download=download)
        X_tr, y_tr = parts["train"]
        n = len(y_tr)
        settings.check_batch(c, n)
        place = launch.place(c)
        if main:
            folder.ensure_run_dir(out, overwrite=overwrite)
    launch.same_everywhere(c, parts, n, "lr-find keeps no checkpoint: run it again")
    prep = preprocess.fit(X_tr, mode=c.preprocess, grayscale=c.grayscale)
    X, y = meshes.shard_rows(X_tr.reshape(n, -1), y_tr, place)
    spe = train.steps_per_epoch(n, c.batch)
    cfg = settings.step_config(c, spe, prep)._replace(schedule=schedules.ScheduleSpec(
        "exponential", total_steps=steps - 1, ratio=lr_max / lr_min))
    start = c.replace(lr=lr_min, epochs=-(-steps // spe))
    state = launch.initial_states((start,), cfg, preprocess.input_dim(prep), stacked=False)
    job = engine.Job(engine.RANGE_TEST, (start,), cfg, place,
                     meshes.replicate(settings.hyper(start), place), X, y, n, None,
                     quiet=True, max_steps=steps)
    trace: list = []
    _, (prog,), _ = engine.run(job, meshes.replicate(state, place), (Progress(),), 0, trace)
    raw = np.concatenate([ce[0] for ce in trace]).astype(np.float64)
    lrs = lr_min * (lr_max / lr_min) ** (np.arange(steps) / (steps - 1))
    smooth, avg, best, stop = [], 0.0, math.inf, len(raw)
    for i, v in enumerate(raw):
        avg = beta * avg + (1 - beta) * (v if np.isfinite(v) else 1e30)
        smooth.append(avg / (1 - beta ** (i + 1)))
        best = min(best, smooth[-1])
        if not np.isfinite(v) or (i > 10 and smooth[-1] > 4 * best):
            stop = i + 1
            break
    smooth = np.asarray(smooth)
    i_min = int(np.argmin(smooth))
    suggestion = float(lrs[i_min] / 10)
    result = {"suggested_lr": suggestion, "lr_at_min_loss": float(lrs[i_min]),
              "min_smoothed_loss": float(smooth[i_min]), "steps_read": stop, "optimizer": c.optimizer,
              "devices": place.devices}
    if prog.gradchecks:
        result.update(stepcheck.summary(list(prog.gradchecks)))
    if main:
        from .. import plots
        plots.lr_find(lrs[:stop], raw[:stop], out / "lr_find.png", suggestion=suggestion, smoothing=beta)
        folder.write_csv(out / "lr_find.csv", [{"step": i, "lr": float(lrs[i]), "loss": float(raw[i]),
                                                "smoothed": float(smooth[i])} for i in range(len(smooth))])
        if prog.gradchecks:
            folder.write_csv(out / "gradchecks.csv", list(prog.gradchecks))
        atomic.write_json(out / "lr_find.json", result)
    return result

"""The learning-rate range test (`svhn-jax lr-find`)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__, atomic, parallel, rundata, runfolder, runs, stepconfig, train
from .data import preprocess
from .config import RunConfig
from .errors import SvhnJaxError
from .nn import model, optim



def lr_find(c: RunConfig, out, *, lr_min=1e-7, lr_max=10.0, steps=300, beta=0.98, overwrite=False,
            download=False) -> dict:
    """The learning-rate range test (Smith 2015; fastai's lr_find).

    Trains from fresh parameters while the learning rate grows exponentially
    from lr_min to lr_max over `steps` steps, records the loss of each step and
    its bias-corrected exponential moving average (beta), and stops reading once
    the smoothed loss exceeds 4x its minimum. Suggestion: the learning rate at
    the smoothed minimum divided by 10, a conservative, commonly used rule.
    """
    out = Path(out)
    if not (0 < lr_min < lr_max < math.inf) or steps < 10:
        raise SvhnJaxError("lr-find needs 0 < --lr-min < --lr-max and --steps >= 10")
    runfolder.check_run_dir(out, overwrite=overwrite)
    parts = rundata.load_split(c, download=download)
    runfolder.ensure_run_dir(out, overwrite=overwrite)
    X_tr, y_tr = parts["train"]
    n = len(y_tr)
    stepconfig.check_batch(c, n)
    prep = preprocess.fit(X_tr, mode=c.preprocess, grayscale=c.grayscale)
    mesh = runs.make_mesh(c)
    X, y = runs.place_train(parts["train"], n, mesh)
    spe = train.steps_per_epoch(n, c.batch)
    cfg = stepconfig.step_config(c, spe, prep)
    lrs = lr_min * (lr_max / lr_min) ** (np.arange(steps) / (steps - 1))
    schedule = lambda step: lr_min * (lr_max / lr_min) ** (step / (steps - 1))
    opt = optim.get(c.optimizer, schedule)
    fresh = train.init_state(c.seed, cfg, preprocess.input_dim(prep), train.Hyper(lr_min, c.reg))
    params, bn_state, key = fresh.params, fresh.bn_state, fresh.key
    epochs = -(-steps // spe)
    order = jnp.concatenate([train.epoch_order(key, e, n, c.batch) for e in range(epochs)])

    loss_and_grads = model.GRAD_MODES[c.grad] if mesh is None else parallel.loss_and_grads(c.grad, mesh)
    batch = train.get_batch if mesh is None else partial(parallel.get_batch, mesh=mesh)

    @jax.jit
    def run(params, bn_state, opt_state, order):
        def body(carry, i):
            p, s, o = carry
            xb, yb = batch(X, y, order, i, key, i, cfg)
            loss, g, s, _ = loss_and_grads(p, s, xb, yb, cfg.spec, c.reg, train=True)
            p, o = opt.update(g, o, p)
            return (p, s, o), loss
        return jax.lax.scan(body, (params, bn_state, opt_state), jnp.arange(steps))[1]

    start = (params, bn_state, opt.init(params), order)
    if mesh is not None:
        start = parallel.replicate(start, mesh)
    raw = np.asarray(run(*start), np.float64)
    smooth, avg, best, stop = [], 0.0, math.inf, steps
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
    from . import plots
    plots.lr_find(lrs[:stop], raw[:stop], out / "lr_find.png", suggestion=suggestion, smoothing=beta)
    rows = [{"step": i, "lr": float(lrs[i]), "loss": float(raw[i]), "smoothed": float(smooth[i])}
            for i in range(len(smooth))]
    runfolder.write_csv(out / "lr_find.csv", rows)
    result = {"suggested_lr": suggestion, "lr_at_min_loss": float(lrs[i_min]),
              "min_smoothed_loss": float(smooth[i_min]), "steps_read": stop, "optimizer": c.optimizer,
              "devices": 1 if mesh is None else parallel.size(mesh), "svhn_jax_version": __version__}
    atomic.write_json(out / "lr_find.json", result)
    return result

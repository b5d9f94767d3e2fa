"""A RunConfig as the compiled training step sees it: the static `train.StepConfig`, the
traced `train.Hyper`, and the checks and schedule readings the loops share."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import train
from .config import RunConfig
from .data import preprocess
from .errors import SvhnJaxError
from .nn import model, optim


def step_config(c: RunConfig, steps_per_epoch: int, prep: dict | None = None) -> train.StepConfig:
    """The static part of a configuration; the schedule's length depends on the data size.
    prep: the run's fitted preprocessing (derived["preprocessing"]), applied per batch
    to uint8 images on the device; None for float32 features prepared beforehand."""
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
        image_shape=(32, 32, 1 if c.grayscale else 3), check_every=c.gradcheck_every,
        keep_grads=c.tensorboard and c.histograms > 0 and c.ensemble == 1,
        prep=preprocess.device_prep(prep) if prep is not None else None)


def hyper(c: RunConfig) -> train.Hyper:
    """The traced hyperparameters of a configuration: every train.Hyper field is read
    from the RunConfig field of the same name, so a new one needs no code here."""
    return train.Hyper(*(jnp.float32(getattr(c, f)) for f in train.Hyper._fields))


def hypers(configs) -> train.Hyper:
    """hyper() of several configurations, stacked along a leading axis (a vmapped sweep)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *map(hyper, configs))


def check_batch(c: RunConfig, n_train: int) -> None:
    if c.batch > n_train:
        raise SvhnJaxError(f"batch size {c.batch} is larger than the training part ({n_train:,} "
                           f"images): not one batch fits; use --batch {n_train} or less ("
                           f"{max(1, n_train // 4)} makes 4 steps an epoch), or more data")


def lr_at(cfg: train.StepConfig, lr, step: int) -> float:
    name, options = cfg.schedule
    return float(optim.make_schedule(name, lr, **dict(options))(jnp.int32(max(step, 0))))

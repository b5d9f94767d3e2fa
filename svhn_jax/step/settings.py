"""A RunConfig as the compiled training step sees it. The one place that builds the
static `train.StepConfig` (with its schedule record) and the traced `train.Hyper`:
every caller (runs, ensembles, sweeps, the range test, the bench) goes through here.

    spec          the network of a configuration (nn.model.make_spec)
    step_config   the static settings of a configuration, for a data set of given size
    schedule      its learning-rate schedule as a record (nn.schedules.ScheduleSpec)
    hyper         the traced hyperparameters, read by field name from the RunConfig
    hypers        hyper() of K configurations, stacked (a vmapped group)
    check_batch   the batch must fit the training part
    lr_at         the learning rate a schedule gives at a step, on the host
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import train
from ..config import RunConfig
from ..data import preprocess
from ..errors import SvhnJaxError
from ..nn import layers, model, schedules


def schedule(c: RunConfig, steps_per_epoch: int) -> schedules.ScheduleSpec:
    """c's schedule over a run of c.epochs epochs of steps_per_epoch updates: cosine
    decays over the whole run; step decay multiplies by c.decay_factor every
    c.decay_epochs epochs (default a third of the run); a warm-up lasts c.warmup epochs
    (at least one update, and at least one after it)."""
    total = max(2, c.epochs * steps_per_epoch)
    every = max(1, round(c.decay_epochs * steps_per_epoch)) if c.decay_epochs else max(1, total // 3)
    warm = (min(max(1, round(c.warmup * steps_per_epoch)), total - 1)
            if c.schedule.startswith("warmup-") else 0)
    return schedules.ScheduleSpec(c.schedule, total_steps=total, warmup_steps=warm,
                                  decay_factor=c.decay_factor, decay_every=every)


def spec(c: RunConfig) -> tuple:
    """The network of c: its hidden sizes, BatchNorm placement, activation, and the
    layers with a rate (dropout) whose RunConfig field of the same name is not 0."""
    return model.make_spec(c.hidden, batchnorm=c.batchnorm, activation=c.activation,
                           rates=tuple(n for n in layers.with_rate() if getattr(c, n)))


def step_config(c: RunConfig, steps_per_epoch: int, prep: dict | None = None, *,
                keep_grads: bool = False) -> train.StepConfig:
    """The static part of a configuration; the schedule's length depends on the data size.
    prep: the run's fitted preprocessing (derived["preprocessing"]), applied per batch
    to uint8 images on the device; None for float32 features prepared beforehand.
    keep_grads: also return each segment's last gradient (TensorBoard histograms)."""
    return train.check_config(train.StepConfig(
        spec=spec(c),
        optimizer=c.optimizer, schedule=schedule(c, steps_per_epoch),
        batch=c.batch, grad_mode=c.grad, shift=c.shift,
        image_shape=(32, 32, 1 if c.grayscale else 3), check_every=c.gradcheck_every,
        keep_grads=keep_grads,
        prep=preprocess.device_prep(prep) if prep is not None else None,
        rotate=c.rotate, scale=c.scale, shear=c.shear, elastic=c.elastic))


def hyper(c: RunConfig) -> train.Hyper:
    """The traced hyperparameters of a configuration: every train.Hyper field is read
    from the RunConfig field of the same name, so a new one needs no code here."""
    return jax.tree.map(lambda x: x[0], hypers([c]))


def hypers(configs) -> train.Hyper:
    """The hyperparameters of several configurations, stacked along a leading axis
    (a vmapped group); None for an optional term that every configuration has at 0."""
    def field(f):
        values = [getattr(c, f) for c in configs]
        if train.Hyper._field_defaults.get(f, 0) is None and not any(values):
            return None
        return jnp.asarray(values, jnp.float32)
    return train.Hyper(**{f: field(f) for f in train.Hyper._fields})


def check_batch(c: RunConfig, n_train: int) -> None:
    if c.batch > n_train:
        raise SvhnJaxError(f"batch size {c.batch} is larger than the training part ({n_train:,} "
                           f"images): not one batch fits; use --batch {n_train} or less ("
                           f"{max(1, n_train // 4)} makes 4 steps an epoch), or more data")


def lr_at(cfg: train.StepConfig, lr, step: int) -> float:
    """The learning rate of update number `step` (0-based) for base rate lr."""
    return float(schedules.build(cfg.schedule, lr)(jnp.int32(max(step, 0))))

"""The JAX execution modes of `svhn-jax bench` and the measurement of one mode
(JAX or reference): the protocol and the record fields are in the package
docstring."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, NamedTuple

import numpy as np

from ..errors import SvhnJaxError
from . import machine, refs, roofline

JAX_MODES = ("scan_manual", "scan_autodiff", "scan_features", "jit_manual", "jit_autodiff", "eager")
FEATURES = "float32 features"
IMAGES = "uint8 images, normalised in the step"


class Measurement(NamedTuple):
    """One mode's outcome: the JSON record, every step's loss in the order run
    (global steps 0, 1, ... for the JAX modes), and the final parameters
    (a NumPy pytree; None for numpy/torch, whose layout differs)."""

    record: dict
    step_losses: np.ndarray
    params: Any


# ----------------------------------------------------------------------- data


class Data(NamedTuple):
    """The bench's data, made once: synthetic SVHN-shaped images and the float32
    features the `scan_features` mode and the references train on."""

    images: np.ndarray    # uint8 (n, 3072): RGB rows, as `svhn-jax train` keeps them
    labels: np.ndarray    # int32 (n,)
    fitted: dict          # preprocess.fit(images) with the mission's preprocessing
    features: np.ndarray  # float32 (n, D): preprocess.apply(images, fitted)


def run_config(hidden: int, batch: int, grad: str = "manual", seed: int = 0, epochs: int = 5):
    """The settings the bench trains with: `svhn-jax train --preset mission --hidden H
    --batch B` (grayscale, per-image standardisation, shifts of 2 pixels, Adam, cosine
    schedule over `epochs` epochs)."""
    from .. import config

    return config.make("mission", hidden=(int(hidden),), batch=int(batch), grad=grad, seed=int(seed),
                       epochs=int(epochs))


def make_data(n: int, seed: int = 0) -> Data:
    """`n` synthetic images (`data.synthetic`), their preprocessing fitted on all of them."""
    from .. import data
    from ..data import preprocess

    images, labels = data.synthetic(n, seed)
    c = run_config(1, 1)
    fitted = preprocess.fit(images, mode=c.preprocess, grayscale=c.grayscale)
    return Data(images.reshape(len(images), -1), np.asarray(labels, np.int32), fitted,
                preprocess.apply(images, fitted))


def jax_setup(c, n: int, fitted: dict, features: bool = False):
    """(StepConfig, Hyper) of RunConfig `c` as `svhn-jax train` builds them
    (step.settings.step_config, step.settings.hyper), for n training images: uint8
    images normalised in the step, or with `features` float32 features ready to use."""
    from ..step import settings, train

    cfg = settings.step_config(c, train.steps_per_epoch(n, c.batch), fitted)
    return train.check_config(cfg._replace(prep=None) if features else cfg), settings.hyper(c)


# ------------------------------------------------------------------ JAX modes


def _step(state, hp, X, y, order, i, cfg):
    """Batch i of the epoch `order`, then one training step: what one scan iteration does."""
    from ..step import train

    xb, yb = train.get_batch(X, y, order, i, state.key, state.step, cfg)
    return train.train_step(state, hp, xb, yb, cfg)


_jit_step = None


def jit_step():
    """`_step` jitted (cfg static, the state donated); built on first use."""
    global _jit_step
    if _jit_step is None:
        import jax

        _jit_step = jax.jit(_step, static_argnames=("cfg",), donate_argnums=(0,))
    return _jit_step


def epoch_orders(key, n: int, batch: int, epochs: int) -> list:
    """`train.epoch_order` of epochs 0 .. epochs-1, computed (and waited for) before any
    timer starts and before the state, whose key they derive from, is donated."""
    import jax

    from ..step import train

    return [jax.block_until_ready(train.epoch_order(key, e, n, batch)) for e in range(epochs)]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_scan(state, hp, X, y, orders, cfg, spe, epochs, run_steps=None):
    """Epoch 0 (with compilation), epoch 1 (warm-up), then `epochs` timed epochs of
    `run_steps` (default `train.run_steps`; the scaling bench passes a mesh's)."""
    import jax

    from ..step import train

    run_steps = run_steps or train.run_steps

    def epoch(e):
        nonlocal state
        order = orders[e]

        def go():
            s, out = run_steps(state, hp, X, y, order, 0, cfg, spe)
            return jax.block_until_ready((s, out))

        dt, (state, (ce, _)) = _timed(go)
        return dt, ce

    first, ce0 = epoch(0)
    second, ce1 = epoch(1)
    times, losses = [], [ce0, ce1]
    for e in range(2, 2 + epochs):
        dt, ce = epoch(e)
        times.append(dt)
        losses.append(ce)
    return state, first - second, times, losses


def _run_jit(state, hp, X, y, orders, cfg, spe, epochs):
    """Steps 0 and 1 timed alone (compile_s), the rest of epoch 0, warm-up epoch 1,
    then `epochs` timed epochs of Python-loop dispatch."""
    import jax

    step = jit_step()
    losses = []

    def one(e, i):
        nonlocal state
        state, (ce, _) = step(state, hp, X, y, orders[e], i, cfg)
        losses.append(ce)

    first, _ = _timed(lambda: (one(0, 0), jax.block_until_ready(state)))
    second = math.inf
    if spe > 1:
        second, _ = _timed(lambda: (one(0, 1), jax.block_until_ready(state)))
    for i in range(2, spe):
        one(0, i)
    times = []
    for e in range(1, 2 + epochs):
        t0 = time.perf_counter()
        for i in range(spe):
            one(e, i)
        jax.block_until_ready(state)
        if e >= 2:
            times.append(time.perf_counter() - t0)
    if spe == 1:  # no second step inside epoch 0: compare with a steady-state epoch
        second = min(times)
    per_epoch = [np.asarray(jax.numpy.stack(losses[k * spe:(k + 1) * spe]))
                 for k in range(len(losses) // spe)]
    return state, first - second, times, per_epoch


def _run_eager(state, hp, X, y, orders, cfg, spe, epochs, eager_steps):
    """Un-jitted steps: 2 warm-up steps (their difference is compile_s), then
    `epochs` timed blocks of `eager_steps` steps, continuing the training run."""
    import jax

    losses, step_no = [], 0

    def one():
        nonlocal state, step_no
        e, i = divmod(step_no, spe)
        state, (ce, _) = _step(state, hp, X, y, orders[e], i, cfg)
        losses.append(ce)
        step_no += 1

    with jax.disable_jit():
        first, _ = _timed(lambda: (one(), jax.block_until_ready(state)))
        second, _ = _timed(lambda: (one(), jax.block_until_ready(state)))
        times = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            for _ in range(eager_steps):
                one()
            jax.block_until_ready(state)
            times.append((time.perf_counter() - t0) / eager_steps * spe)
    return state, first - second, times, losses


def measure_jax(mode: str, hidden: int, batch: int, X, y, fitted: dict, *, epochs: int = 3,
                seed: int = 0, eager_steps: int = 20) -> Measurement:
    """Measure one JAX mode on device arrays X and y: X the uint8 image rows (n, 3072)
    (Data.images), or for `scan_features` their float32 features (n, D) (Data.features);
    y (n,) int32; fitted: their preprocessing (Data.fitted)."""
    import jax

    from ..data import preprocess
    from ..step import train

    if mode not in JAX_MODES:
        raise SvhnJaxError(f"{mode!r} is not a JAX mode; choose from {', '.join(JAX_MODES)}")
    features = mode == "scan_features"
    if (X.dtype == np.uint8) == features:
        raise SvhnJaxError(f"{mode} trains on {FEATURES if features else IMAGES}; got X of dtype {X.dtype}")
    n = int(X.shape[0])
    c = run_config(hidden, batch, "autodiff" if mode.endswith("autodiff") else "manual", seed, 2 + epochs)
    cfg, hp = jax_setup(c, n, fitted, features)
    spe = train.steps_per_epoch(n, batch)
    in_dim = preprocess.input_dim(fitted)
    state = train.init_state(seed, cfg, in_dim, hp)
    eager_total = 2 + epochs * eager_steps
    orders = epoch_orders(state.key, n, batch,
                          -(-eager_total // spe) if mode == "eager" else 2 + epochs)
    with machine.measure_load() as load:
        if mode.startswith("scan"):
            state, compile_s, times, losses = run_scan(state, hp, X, y, orders, cfg, spe, epochs)
            last = np.asarray(losses[-1])
        elif mode.startswith("jit"):
            state, compile_s, times, losses = _run_jit(state, hp, X, y, orders, cfg, spe, epochs)
            last = np.asarray(losses[-1])
        else:
            state, compile_s, times, losses = _run_eager(state, hp, X, y, orders, cfg, spe, epochs,
                                                         eager_steps)
            last = np.asarray(jax.numpy.stack(losses[-eager_steps:]))
    step_losses = np.concatenate([np.atleast_1d(np.asarray(v, np.float32)) for v in losses])
    record = make_record(mode, c, n, spe, in_dim, X.dtype.itemsize * X.shape[1], compile_s, times, load,
                         loss=float(np.mean(last, dtype=np.float64)), loss_includes_l2=False,
                         extrapolated=mode == "eager", runs_on=jax.default_backend(),
                         inputs=FEATURES if features else IMAGES)
    if mode == "eager":
        record["eager_steps"] = eager_steps
    params = jax.tree.map(np.asarray, state.params)
    return Measurement(record, step_losses, params)


# ------------------------------------------------------------------ references


def measure_ref(mode: str, hidden: int, batch: int, data: Data, *, epochs: int = 3,
                seed: int = 0) -> Measurement | None:
    """Measure `numpy` or `torch_eager` on data.features (host); None when torch is missing.
    They train the bench's network with its learning rate and L2 (constant schedule)."""
    make = {"numpy": refs.numpy_epoch_fn, "torch_eager": refs.torch_epoch_fn}
    if mode not in make:
        raise SvhnJaxError(f"{mode!r} is not a reference mode; choose numpy or torch_eager")
    X, y = data.features, data.labels
    n = len(X)
    c = run_config(hidden, batch, seed=seed)
    fn = make[mode](hidden, batch, X.shape[1], seed, lr=c.lr, reg=c.reg)
    if fn is None:
        return None
    with machine.measure_load() as load:
        _, loss0 = fn(X, y)  # warm-up epoch
        times, losses = [], [loss0]
        for _ in range(epochs):
            dt, loss = fn(X, y)
            times.append(dt)
            losses.append(loss)
    record = make_record(mode, c, n, n // batch, X.shape[1], X.itemsize * X.shape[1], 0.0, times, load,
                         loss=float(losses[-1]), loss_includes_l2=True, extrapolated=False,
                         runs_on="cpu", inputs=FEATURES)
    return Measurement(record, np.asarray(losses, np.float32), None)


# ------------------------------------------------------------------- records


def spread(times) -> float:
    """(slowest - fastest) / median of the timed epochs: 0 when they all agree."""
    return (max(times) - min(times)) / statistics.median(times)


def make_record(mode, c, n, steps, in_dim, row_bytes, compile_s, times, load, *, loss, loss_includes_l2,
                extrapolated, runs_on, inputs) -> dict:
    """A mode's JSON record (package docstring); the floors are added by `add_floors`."""
    s = statistics.median(times)
    hidden, = c.hidden
    images = steps * c.batch
    return {"mode": mode, "hidden": int(hidden), "batch": int(c.batch), "n": int(n), "inputs": inputs,
            "in_dim": int(in_dim), "shift": c.shift if mode not in ("numpy", "torch_eager") else 0,
            "steps_per_epoch": int(steps), "images_per_epoch": int(images),
            "compile_s": max(0.0, float(compile_s)), "s_per_epoch": float(s), "spread": spread(times),
            "samples_per_s": n / s, "epoch_s": [float(t) for t in times],
            "flops_per_epoch": refs.flops_per_epoch(images, in_dim, hidden),
            "state_bytes": roofline.state_bytes(roofline.param_count(model_spec(c), in_dim), c.optimizer),
            "batch_bytes": roofline.batch_bytes(c.batch, row_bytes),
            "extrapolated": bool(extrapolated), "runs_on": runs_on,
            "other_busy_cores": load.get("other_busy_cores"), "busy": load.get("busy"),
            "loss": loss, "loss_includes_l2": loss_includes_l2}


def model_spec(c) -> tuple:
    """The network of RunConfig c (model.make_spec)."""
    from ..nn import model

    return model.make_spec(c.hidden, batchnorm=c.batchnorm)


def add_floors(record: dict, peak_gflops: float, state_gbs: float, stream_gbs: float) -> dict:
    """The record with its roofline (roofline.floors) and frac_floor = floor / s_per_epoch."""
    record.update(roofline.floors(flops=record["flops_per_epoch"], steps=record["steps_per_epoch"],
                                  state=record["state_bytes"], batch=record["batch_bytes"],
                                  peak_gflops=peak_gflops, state_gbs=state_gbs, stream_gbs=stream_gbs))
    record["frac_floor"] = record["floor_s"] / record["s_per_epoch"]
    return record

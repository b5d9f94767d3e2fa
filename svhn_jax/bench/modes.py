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
from . import machine, refs

JAX_MODES = ("scan_manual", "scan_autodiff", "jit_manual", "jit_autodiff", "eager")
LR = refs.DEFAULT_LR
REG = refs.DEFAULT_REG
IN_DIM = 32 * 32 * 3


class Measurement(NamedTuple):
    """One mode's outcome: the JSON record, every step's loss in the order run
    (global steps 0, 1, ... for the JAX modes), and the final parameters
    (a NumPy pytree; None for numpy/torch, whose layout differs)."""

    record: dict
    step_losses: np.ndarray
    params: Any


# ----------------------------------------------------------------------- data


def make_data(n: int, seed: int = 0):
    """Synthetic SVHN-shaped data: X float32 (n, 3072) in [-1, 1] (RGB, flattened), y int32 (n,)."""
    from .. import data

    X8, y = data.synthetic(n, seed)
    X = X8.reshape(len(X8), -1).astype(np.float32)
    X *= np.float32(1 / 127.5)
    X -= np.float32(1.0)
    return X, np.asarray(y, np.int32)


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


def jax_setup(hidden: int, batch: int, grad_mode: str, seed: int = 0):
    """(StepConfig, Hyper) of the bench network, as `svhn-jax train` would build them."""
    import jax.numpy as jnp

    from ..step import train
    from ..nn import model

    cfg = train.StepConfig(model.make_spec((hidden,)), "adam", batch=batch, grad_mode=grad_mode)
    train.check_config(cfg)
    return cfg, train.Hyper(jnp.float32(LR), jnp.float32(REG))


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


def measure_jax(mode: str, hidden: int, batch: int, X, y, *, epochs: int = 3, seed: int = 0,
                eager_steps: int = 20) -> Measurement:
    """Measure one JAX mode on device arrays X (N, D) float32, y (N,) int32."""
    import jax

    from ..step import train

    if mode not in JAX_MODES:
        raise SvhnJaxError(f"{mode!r} is not a JAX mode; choose from {', '.join(JAX_MODES)}")
    n = int(X.shape[0])
    grad_mode = "autodiff" if mode.endswith("autodiff") else "manual"
    cfg, hp = jax_setup(hidden, batch, grad_mode, seed)
    spe = train.steps_per_epoch(n, batch)
    state = train.init_state(seed, cfg, int(X.shape[1]), hp)
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
    record = make_record(mode, hidden, batch, n, spe * batch, compile_s, times, load,
                         loss=float(np.mean(last, dtype=np.float64)), loss_includes_l2=False,
                         extrapolated=mode == "eager", runs_on=jax.default_backend())
    if mode == "eager":
        record["eager_steps"] = eager_steps
    params = jax.tree.map(np.asarray, state.params)
    return Measurement(record, step_losses, params)


# ------------------------------------------------------------------ references


def measure_ref(mode: str, hidden: int, batch: int, X: np.ndarray, y: np.ndarray, *,
                epochs: int = 3, seed: int = 0) -> Measurement | None:
    """Measure `numpy` or `torch_eager` on host arrays; None when torch is missing."""
    make = {"numpy": refs.numpy_epoch_fn, "torch_eager": refs.torch_epoch_fn}
    if mode not in make:
        raise SvhnJaxError(f"{mode!r} is not a reference mode; choose numpy or torch_eager")
    n = len(X)
    fn = make[mode](hidden, batch, X.shape[1], seed, lr=LR, reg=REG)
    if fn is None:
        return None
    with machine.measure_load() as load:
        _, loss0 = fn(X, y)  # warm-up epoch
        times, losses = [], [loss0]
        for _ in range(epochs):
            dt, loss = fn(X, y)
            times.append(dt)
            losses.append(loss)
    record = make_record(mode, hidden, batch, n, n // batch * batch, 0.0, times, load,
                         loss=float(losses[-1]), loss_includes_l2=True, extrapolated=False,
                         runs_on="cpu")
    return Measurement(record, np.asarray(losses, np.float32), None)


# ------------------------------------------------------------------- records


def make_record(mode, hidden, batch, n, images, compile_s, times, load, *, loss, loss_includes_l2,
                extrapolated, runs_on) -> dict:
    s = statistics.median(times)
    return {"mode": mode, "hidden": int(hidden), "batch": int(batch), "n": int(n),
            "images_per_epoch": int(images), "compile_s": max(0.0, float(compile_s)),
            "s_per_epoch": float(s), "samples_per_s": n / s,
            "flops_per_epoch": refs.flops_per_epoch(images, IN_DIM, hidden),
            "frac_peak": None, "epoch_s": [float(t) for t in times],
            "extrapolated": bool(extrapolated), "runs_on": runs_on,
            "other_busy_cores": load.get("other_busy_cores"), "busy": load.get("busy"),
            "loss": loss, "loss_includes_l2": loss_includes_l2}

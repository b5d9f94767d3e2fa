"""The JAX execution modes of `svhn-jax bench` and the measurement of one mode
(JAX or reference): the protocol and the record fields are in the package
docstring."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, NamedTuple

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


class Runner(NamedTuple):
    """One mode, ready to be timed epoch by epoch (`measure` interleaves the modes):
    warm() trains what is not timed (compilation, a warm-up epoch) and returns
    compile_s; epoch() trains one timed epoch and returns its seconds (eager: its
    block of steps, extrapolated to an epoch); done(times, compile_s, load) makes the
    mode's Measurement."""

    warm: Callable[[], float]
    epoch: Callable[[], float]
    done: Callable[[list, float, dict], Measurement]


def scan_epochs(state, hp, X, y, orders, cfg, spe, run_steps=None):
    """Whole epochs of `run_steps` (default `train.run_steps`; the scaling bench passes a
    mesh's) -> (warm, epoch, final): warm() trains epoch 0 (with compilation) and epoch
    1 and returns their difference; epoch() trains the next epoch -> seconds; final()
    -> (state, [cross-entropy per step of each epoch])."""
    import jax

    from ..step import train

    run_steps = run_steps or train.run_steps
    losses = []

    def epoch():
        nonlocal state
        t0 = time.perf_counter()
        state, (ce, _) = jax.block_until_ready(run_steps(state, hp, X, y, orders[len(losses)], 0, cfg, spe))
        losses.append(ce)
        return time.perf_counter() - t0

    return lambda: epoch() - epoch(), epoch, lambda: (state, losses)


def _jit_epochs(state, hp, X, y, orders, cfg, spe):
    """scan_epochs' contract for a jitted step called from a Python loop: compile_s is
    step 0 minus step 1 (with one step an epoch: minus the warm-up epoch)."""
    import jax

    step, losses = jit_step(), []

    def one(e, i):
        nonlocal state
        state, (ce, _) = step(state, hp, X, y, orders[e], i, cfg)
        losses.append(ce)

    def timed(steps):
        t0 = time.perf_counter()
        for e, i in steps:
            one(e, i)
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    def warm():
        first = timed([(0, 0)])
        second = timed([(0, 1)]) if spe > 1 else None
        timed([(0, i) for i in range(2, spe)])
        whole = timed([(1, i) for i in range(spe)])
        return first - (whole if second is None else second)

    epoch = lambda: timed([(len(losses) // spe, i) for i in range(spe)])
    final = lambda: (state, [jax.numpy.stack(losses[k:k + spe]) for k in range(0, len(losses), spe)])
    return warm, epoch, final


def _eager_epochs(state, hp, X, y, orders, cfg, spe, block):
    """scan_epochs' contract for un-jitted steps (`jax.disable_jit()`): compile_s is
    step 0 minus step 1; an epoch's seconds are those of a block of `block` steps,
    scaled to the epoch's spe steps; final() gives every step's loss."""
    import jax

    losses = []

    def timed(count):
        nonlocal state
        with jax.disable_jit():
            t0 = time.perf_counter()
            for _ in range(count):
                e, i = divmod(len(losses), spe)
                state, (ce, _) = _step(state, hp, X, y, orders[e], i, cfg)
                losses.append(ce)
            jax.block_until_ready(state)
        return time.perf_counter() - t0

    return lambda: timed(1) - timed(1), lambda: timed(block) / block * spe, lambda: (state, losses)


def jax_runner(mode: str, hidden: int, batch: int, X, y, fitted: dict, *, epochs: int = 3, seed: int = 0,
               eager_steps: int = 20) -> Runner:
    """One JAX mode on device arrays X and y: X the uint8 image rows (n, 3072)
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
    eager = mode == "eager"
    orders = epoch_orders(state.key, n, batch, -(-(2 + epochs * eager_steps) // spe) if eager else 2 + epochs)
    if mode.startswith("scan"):
        warm, epoch, final = scan_epochs(state, hp, X, y, orders, cfg, spe)
    elif mode.startswith("jit"):
        warm, epoch, final = _jit_epochs(state, hp, X, y, orders, cfg, spe)
    else:
        warm, epoch, final = _eager_epochs(state, hp, X, y, orders, cfg, spe, eager_steps)

    def done(times, compile_s, load):
        state, losses = final()
        last = jax.numpy.stack(losses[-eager_steps:]) if eager else losses[-1]
        record = make_record(mode, c, n, spe, in_dim, X.dtype.itemsize * X.shape[1], compile_s, times, load,
                             loss=float(np.mean(np.asarray(last), dtype=np.float64)), loss_includes_l2=False,
                             extrapolated=eager, runs_on=jax.default_backend(),
                             inputs=FEATURES if features else IMAGES)
        if eager:
            record["eager_steps"] = eager_steps
        steps = np.concatenate([np.atleast_1d(np.asarray(v, np.float32)) for v in losses])
        return Measurement(record, steps, jax.tree.map(np.asarray, state.params))

    return Runner(warm, epoch, done)


def ref_runner(mode: str, hidden: int, batch: int, data: Data, *, seed: int = 0) -> Runner | None:
    """`numpy` or `torch_eager` on data.features (host), training the bench's network
    with its learning rate and L2 (constant schedule); None when torch is missing.
    warm() trains one untimed epoch (compile_s 0)."""
    make = {"numpy": refs.numpy_epoch_fn, "torch_eager": refs.torch_epoch_fn}
    if mode not in make:
        raise SvhnJaxError(f"{mode!r} is not a reference mode; choose numpy or torch_eager")
    X, y = data.features, data.labels
    c = run_config(hidden, batch, seed=seed)
    fn = make[mode](hidden, batch, X.shape[1], seed, lr=c.lr, reg=c.reg)
    if fn is None:
        return None
    losses = []

    def epoch():
        dt, loss = fn(X, y)
        losses.append(loss)
        return dt

    def done(times, compile_s, load):
        record = make_record(mode, c, len(X), len(X) // batch, X.shape[1], X.itemsize * X.shape[1], 0.0,
                             times, load, loss=float(losses[-1]), loss_includes_l2=True, extrapolated=False,
                             runs_on="cpu", inputs=FEATURES)
        return Measurement(record, np.asarray(losses, np.float32), None)

    def warm():
        epoch()
        return 0.0

    return Runner(warm, epoch, done)


def measure(runners: dict, epochs: int) -> dict:
    """{mode: Runner} -> {mode: Measurement}: every mode warmed up, then `epochs`
    rounds of one timed epoch of every mode, in alternating order (first to last,
    then last to first), so that a load that comes and goes hits every mode alike.
    Each mode's load is that of other processes during its own epochs
    (machine.combine_loads)."""
    names = list(runners)
    compile_s = {m: runners[m].warm() for m in names}
    times, loads = {m: [] for m in names}, {m: [] for m in names}
    for k in range(epochs):
        for m in (names if k % 2 == 0 else names[::-1]):
            token = machine.load_start()
            times[m].append(runners[m].epoch())
            loads[m].append(machine.load_stop(token))
    return {m: runners[m].done(times[m], compile_s[m], machine.combine_loads(loads[m])) for m in names}


def measure_jax(mode: str, hidden: int, batch: int, X, y, fitted: dict, *, epochs: int = 3, seed: int = 0,
                eager_steps: int = 20) -> Measurement:
    """One JAX mode timed alone (jax_runner, measure)."""
    return measure({mode: jax_runner(mode, hidden, batch, X, y, fitted, epochs=epochs, seed=seed,
                                     eager_steps=eager_steps)}, epochs)[mode]


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
    """The network of RunConfig c (step.settings.spec)."""
    from ..step import settings

    return settings.spec(c)


def add_floors(record: dict, peak_gflops: float, state_gbs: float, stream_gbs: float) -> dict:
    """The record with its roofline (roofline.floors) and frac_floor = floor / s_per_epoch."""
    record.update(roofline.floors(flops=record["flops_per_epoch"], steps=record["steps_per_epoch"],
                                  state=record["state_bytes"], batch=record["batch_bytes"],
                                  peak_gflops=peak_gflops, state_gbs=state_gbs, stream_gbs=stream_gbs))
    record["frac_floor"] = record["floor_s"] / record["s_per_epoch"]
    return record

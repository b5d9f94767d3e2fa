"""`svhn-jax bench`: seconds per training epoch of the same network in several
execution modes, measured back to back in one process.

The network and optimizer are those of the mission: FC(3072->H) - ReLU -
FC(H->10), softmax cross-entropy + 0.5 * 1e-4 * sum W^2, Adam lr 1e-3,
constant schedule, float32, on synthetic SVHN-shaped data (`data.synthetic`,
scaled to [-1, 1], flattened to (N, 3072)). The data are created once, put on
the device once and passed to every jitted function as an argument.

Modes, in the order they run for each (hidden, batch):

    scan_manual, scan_autodiff   `train.run_steps` over a whole epoch: one compiled
                                 lax.scan, exactly what `svhn-jax train` runs
                                 (hand-written VJPs / jax.grad)
    jit_manual, jit_autodiff     one jitted step (batch gather + `train.train_step`,
                                 state donated) called from a Python loop; the
                                 device is waited for at the end of the epoch only
    eager                        the same step un-jitted (`jax.disable_jit()`):
                                 `eager_steps` steps are timed and the epoch is
                                 extrapolated from the median step (extrapolated: true)
    numpy                        `bench_refs.numpy_epoch_fn`: NumPy by hand
    torch_eager                  `bench_refs.torch_epoch_fn`: eager PyTorch (skipped
                                 when torch is not installed)

Protocol per mode: a first call (for the jitted modes it includes tracing and
compilation), a warm-up epoch, then `epochs` timed epochs (wall time, ended by
`block_until_ready`); s_per_epoch is their median. The batch order of an epoch
is computed before its timer starts, in every mode.

    compile_s      jitted modes: first call minus a second call of the same work
                   (scan: epoch 0 minus epoch 1; jit: step 0 minus step 1), floored
                   at 0; eager: the same difference for op-by-op dispatch; 0 for
                   numpy and torch
    samples_per_s  n / s_per_epoch (dataset images per second)
    frac_peak      flops_per_epoch(images processed) / s_per_epoch / peak. The JAX
                   modes process ceil(n/B)*B images an epoch (the last batch is
                   completed from the start of the permutation, as in training);
                   NumPy and PyTorch process floor(n/B)*B (tail dropped)
    other_busy_cores, busy
                   CPU used by OTHER processes while the mode ran (bench_refs.load_stop)
    loss           mean training loss over the last timed epoch (eager: over its
                   last timed block): cross-entropy for the JAX modes (what
                   train_step reports), cross-entropy + L2 for numpy and torch
                   (loss_includes_l2). The JAX modes share one initialisation and
                   data order, so their losses agree to float32 rounding.

The peak is `bench_refs.peak_gflops()` measured at the start and at the end; the
larger is used. Absolute times drift by 30% or more between runs on shared
machines: compare the ratios, which come from one run, and heed busy_warning.
Nothing here depends on the backend; on a GPU the NumPy and PyTorch references
still run on the CPU (runs_on).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from . import bench_refs
from .errors import SvhnJaxError

JAX_MODES = ("scan_manual", "scan_autodiff", "jit_manual", "jit_autodiff", "eager")
MODES = JAX_MODES + ("numpy", "torch_eager")
LR = bench_refs.DEFAULT_LR
REG = bench_refs.DEFAULT_REG
IN_DIM = 32 * 32 * 3

#: Speed-ups reported for each (hidden, batch): t(b) / t(a), so > 1 means `a` is faster.
RATIO_PAIRS = (
    ("scan_manual", "scan_autodiff"),
    ("jit_manual", "jit_autodiff"),
    ("scan_manual", "jit_manual"),
    ("scan_autodiff", "jit_autodiff"),
    ("jit_manual", "eager"),
    ("scan_manual", "numpy"),
    ("scan_manual", "torch_eager"),
    ("numpy", "torch_eager"),
)


class Measurement(NamedTuple):
    """One mode's outcome: the JSON record, every step's loss in the order run
    (global steps 0, 1, ... for the JAX modes), and the final parameters
    (a NumPy pytree; None for numpy/torch, whose layout differs)."""

    record: dict
    step_losses: np.ndarray
    params: Any


# ------------------------------------------------------------------ arguments


def parse_modes(text: str | Sequence[str]) -> tuple[str, ...]:
    """'scan_manual,numpy' (or a sequence) -> modes in the canonical MODES order."""
    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m) for m in text]
    names = [m for m in names if m]
    if not names:
        raise SvhnJaxError(f"no modes given; choose from {', '.join(MODES)}")
    unknown = [m for m in names if m not in MODES]
    if unknown:
        raise SvhnJaxError(f"unknown mode{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                           f"choose from {', '.join(MODES)}")
    return tuple(m for m in MODES if m in names)


def check_args(hidden: Sequence[int], batch: Sequence[int], epochs: int, n: int,
               eager_steps: int = 20) -> None:
    """Clear errors for values the bench cannot run with."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise SvhnJaxError(f"--n must be a positive number of images, got {n!r}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise SvhnJaxError(f"--epochs must be at least 1, got {epochs!r}")
    if not isinstance(eager_steps, (int, np.integer)) or eager_steps < 1:
        raise SvhnJaxError(f"--eager-steps must be at least 1, got {eager_steps!r}")
    if not hidden:
        raise SvhnJaxError("give at least one hidden size, e.g. --hidden 128")
    for h in hidden:
        if not isinstance(h, (int, np.integer)) or h < 1:
            raise SvhnJaxError(f"hidden sizes must be positive integers, got {list(hidden)}")
    if not batch:
        raise SvhnJaxError("give at least one batch size, e.g. --batch 64")
    for b in batch:
        if not isinstance(b, (int, np.integer)) or b < 1:
            raise SvhnJaxError(f"batch sizes must be positive integers, got {list(batch)}")
        if b > n:
            raise SvhnJaxError(f"batch size {b} is larger than the data ({n} images); "
                               f"use a smaller --batch or a larger --n")


# ----------------------------------------------------------------------- data


def make_data(n: int, seed: int = 0):
    """Synthetic SVHN-shaped data: X float32 (n, 3072) in [-1, 1] (RGB, flattened), y int32 (n,)."""
    from . import data

    X8, y = data.synthetic(n, seed)
    X = X8.reshape(len(X8), -1).astype(np.float32)
    X *= np.float32(1 / 127.5)
    X -= np.float32(1.0)
    return X, np.asarray(y, np.int32)


# ------------------------------------------------------------------ JAX modes


def _step(state, hp, X, y, order, i, cfg):
    """Batch i of the epoch `order`, then one training step: what one scan iteration does."""
    from . import train

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

    from . import train
    from .nn import model

    cfg = train.StepConfig(model.make_spec((hidden,)), "adam", ("constant", ()), batch, grad_mode)
    train.check_config(cfg)
    return cfg, train.Hyper(jnp.float32(LR), jnp.float32(REG))


def epoch_orders(key, n: int, batch: int, epochs: int) -> list:
    """`train.epoch_order` of epochs 0 .. epochs-1, computed (and waited for) before any
    timer starts and before the state, whose key they derive from, is donated."""
    import jax

    from . import train

    return [jax.block_until_ready(train.epoch_order(key, e, n, batch)) for e in range(epochs)]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _run_scan(state, hp, X, y, orders, cfg, spe, epochs):
    """Epoch 0 (with compilation), epoch 1 (warm-up), then `epochs` timed epochs."""
    import jax

    from . import train

    def epoch(e):
        nonlocal state
        order = orders[e]

        def go():
            s, out = train.run_steps(state, hp, X, y, order, 0, cfg, spe)
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

    from . import train

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
    with bench_refs.measure_load() as load:
        if mode.startswith("scan"):
            state, compile_s, times, losses = _run_scan(state, hp, X, y, orders, cfg, spe, epochs)
            last = np.asarray(losses[-1])
        elif mode.startswith("jit"):
            state, compile_s, times, losses = _run_jit(state, hp, X, y, orders, cfg, spe, epochs)
            last = np.asarray(losses[-1])
        else:
            state, compile_s, times, losses = _run_eager(state, hp, X, y, orders, cfg, spe, epochs,
                                                         eager_steps)
            last = np.asarray(jax.numpy.stack(losses[-eager_steps:]))
    step_losses = np.concatenate([np.atleast_1d(np.asarray(v, np.float32)) for v in losses])
    record = _record(mode, hidden, batch, n, spe * batch, compile_s, times, load,
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
    make = {"numpy": bench_refs.numpy_epoch_fn, "torch_eager": bench_refs.torch_epoch_fn}
    if mode not in make:
        raise SvhnJaxError(f"{mode!r} is not a reference mode; choose numpy or torch_eager")
    n = len(X)
    fn = make[mode](hidden, batch, X.shape[1], seed, lr=LR, reg=REG)
    if fn is None:
        return None
    with bench_refs.measure_load() as load:
        _, loss0 = fn(X, y)  # warm-up epoch
        times, losses = [], [loss0]
        for _ in range(epochs):
            dt, loss = fn(X, y)
            times.append(dt)
            losses.append(loss)
    record = _record(mode, hidden, batch, n, n // batch * batch, 0.0, times, load,
                     loss=float(losses[-1]), loss_includes_l2=True, extrapolated=False,
                     runs_on="cpu")
    return Measurement(record, np.asarray(losses, np.float32), None)


# ------------------------------------------------------------------- records


def _record(mode, hidden, batch, n, images, compile_s, times, load, *, loss, loss_includes_l2,
            extrapolated, runs_on) -> dict:
    s = statistics.median(times)
    return {"mode": mode, "hidden": int(hidden), "batch": int(batch), "n": int(n),
            "images_per_epoch": int(images), "compile_s": max(0.0, float(compile_s)),
            "s_per_epoch": float(s), "samples_per_s": n / s,
            "flops_per_epoch": bench_refs.flops_per_epoch(images, IN_DIM, hidden),
            "frac_peak": None, "epoch_s": [float(t) for t in times],
            "extrapolated": bool(extrapolated), "runs_on": runs_on,
            "other_busy_cores": load.get("other_busy_cores"), "busy": load.get("busy"),
            "loss": loss, "loss_includes_l2": loss_includes_l2}


def ratios(results: Sequence[dict]) -> dict:
    """{"h128_b64": {"scan_manual_vs_scan_autodiff": t(scan_autodiff)/t(scan_manual), ...}}:
    speed-ups of the first mode over the second (> 1: the first is faster)."""
    out: dict = {}
    for r in results:
        out.setdefault(f"h{r['hidden']}_b{r['batch']}", {})
    for key in out:
        t = {r["mode"]: r["s_per_epoch"] for r in results if f"h{r['hidden']}_b{r['batch']}" == key}
        out[key] = {f"{a}_vs_{b}": t[b] / t[a] for a, b in RATIO_PAIRS if a in t and b in t}
    return out


# ------------------------------------------------------------------------ run


def device_name() -> str:
    import jax

    d = jax.devices()[0]
    return getattr(d, "device_kind", None) or d.platform


def run(hidden: Sequence[int] = (128,), batch: Sequence[int] = (64, 512), epochs: int = 3,
        n: int = 73257, modes: Sequence[str] | str = MODES, seed: int = 0, *,
        eager_steps: int = 20, peak_size: int = 2048,
        progress: Callable[[str], None] | None = None, keep: list | None = None) -> dict:
    """Measure every mode for every (hidden, batch); returns the JSON report:

    {"peak_gflops", "peak_gflops_start", "peak_gflops_end", "peak_busy", "device",
     "backend", "results": [record, ...], "skipped": [...], "ratios": {...},
     "busy_warning"}

    `keep`, when given a list, receives every `Measurement` (with step losses and
    final parameters) in the order measured. `progress` gets one line per mode.
    """
    hidden, batch = tuple(hidden), tuple(batch)
    modes = parse_modes(modes)
    check_args(hidden, batch, epochs, n, eager_steps)
    say = progress or (lambda msg: None)

    import jax

    with bench_refs.measure_load() as peak_load:
        peak_start = bench_refs.peak_gflops(peak_size)
    say(f"peak {peak_start:.1f} GFLOP/s ({jax.default_backend()})")
    X_host, y_host = make_data(n, seed)
    X, y = jax.device_put(X_host), jax.device_put(y_host)
    jax.block_until_ready((X, y))

    results, skipped = [], []
    for h in hidden:
        for b in batch:
            for mode in modes:
                if mode in JAX_MODES:
                    m = measure_jax(mode, h, b, X, y, epochs=epochs, seed=seed, eager_steps=eager_steps)
                else:
                    m = measure_ref(mode, h, b, X_host, y_host, epochs=epochs, seed=seed)
                if m is None:
                    skipped.append({"mode": mode, "hidden": h, "batch": b,
                                    "reason": "torch is not installed (pip install torch)"})
                    say(f"{mode:14s} H={h} B={b}: skipped (torch is not installed)")
                    continue
                results.append(m.record)
                if keep is not None:
                    keep.append(m)
                say(f"{mode:14s} H={h} B={b}: {m.record['s_per_epoch']:.3f} s/epoch"
                    + (" (extrapolated)" if m.record["extrapolated"] else "")
                    + (" BUSY" if m.record["busy"] else ""))

    with bench_refs.measure_load() as end_load:
        peak_end = bench_refs.peak_gflops(peak_size)
    peak = max(peak_start, peak_end)
    for r in results:
        r["frac_peak"] = r["flops_per_epoch"] / r["s_per_epoch"] / (peak * 1e9)
    peak_busy = bool(peak_load.get("busy") or end_load.get("busy"))
    return {"peak_gflops": peak, "peak_gflops_start": peak_start, "peak_gflops_end": peak_end,
            "peak_busy": peak_busy, "device": device_name(), "backend": jax.default_backend(),
            "results": results, "skipped": skipped, "ratios": ratios(results),
            "busy_warning": peak_busy or any(bool(r["busy"]) for r in results)}


# ---------------------------------------------------------------------- table


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def format_report(report: dict) -> str:
    """The human-readable table, the ratios and any warnings."""
    lines = [f"device {report['device']} ({report['backend']}); peak {report['peak_gflops']:.1f} GFLOP/s "
             f"(start {report['peak_gflops_start']:.1f}, end {report['peak_gflops_end']:.1f})", ""]
    head = (f"{'mode':14s} {'H':>5s} {'batch':>5s} {'compile s':>9s} {'s/epoch':>8s} "
            f"{'samples/s':>10s} {'% peak':>6s} {'other cores':>11s} {'loss':>8s}  note")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        note = []
        if r["extrapolated"]:
            note.append(f"extrapolated from {r.get('eager_steps', '?')} steps")
        if r["runs_on"] != report["backend"]:
            note.append(f"on {r['runs_on']}")
        if r["busy"]:
            note.append("BUSY")
        lines.append(f"{r['mode']:14s} {r['hidden']:5d} {r['batch']:5d} {r['compile_s']:9.2f} "
                     f"{r['s_per_epoch']:8.3f} {r['samples_per_s']:10.0f} "
                     f"{_fmt(r['frac_peak'] and 100 * r['frac_peak'], '6.1f'):>6s} "
                     f"{_fmt(r['other_busy_cores'], '11.2f'):>11s} {r['loss']:8.3g}  {', '.join(note)}")
    for s in report["skipped"]:
        lines.append(f"{s['mode']:14s} {s['hidden']:5d} {s['batch']:5d}  skipped: {s['reason']}")
    keys = [k for k, rs in report["ratios"].items() if rs]
    if keys:
        lines += ["", "speed-ups t(B) / t(A) (> 1: A is faster)"]
        lines.append(f"  {'A vs B':32s}" + "".join(f"{k:>12s}" for k in keys))
        for a, b in RATIO_PAIRS:
            name = f"{a}_vs_{b}"
            if any(name in report["ratios"][k] for k in keys):
                lines.append(f"  {a + ' vs ' + b:32s}" + "".join(
                    f"{_fmt(report['ratios'][k].get(name), '.2f') + 'x':>12s}" for k in keys))
    lines += ["", "loss: mean over the last timed epoch (eager: its last timed steps); "
                  "cross-entropy for JAX, + L2 for numpy/torch."]
    if any(r["extrapolated"] for r in report["results"]):
        lines.append("eager: s/epoch extrapolated from the median of its timed steps.")
    if report["busy_warning"]:
        lines.append("WARNING: other processes kept the CPU busy during "
                     + ("the peak measurement and " if report["peak_busy"] else "")
                     + "at least one mode (BUSY above); absolute times and ratios may be off. "
                     "Rerun on a quiet machine.")
    return "\n".join(lines)

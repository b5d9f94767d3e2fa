"""`svhn-jax bench` as a whole: the arguments, every mode for every (hidden,
batch), the gradient check's cost when asked, the speed-up ratios and the table."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import SvhnJaxError
from . import checks, machine, roofline, scaling
from .modes import FEATURES, JAX_MODES, add_floors, jax_runner, make_data, measure, ref_runner

MODES = JAX_MODES + ("numpy", "torch_eager")

#: Speed-ups reported for each (hidden, batch): t(b) / t(a), so > 1 means `a` is faster.
RATIO_PAIRS = (
    ("scan_manual", "scan_autodiff"),
    ("scan_manual", "scan_features"),
    ("jit_manual", "jit_autodiff"),
    ("scan_manual", "jit_manual"),
    ("scan_autodiff", "jit_autodiff"),
    ("jit_manual", "eager"),
    ("scan_manual", "numpy"),
    ("scan_manual", "torch_eager"),
    ("numpy", "torch_eager"),
)


# ------------------------------------------------------------------ arguments


def parse_modes(text: str | Sequence[str]) -> tuple[str, ...]:
    """'scan_manual,numpy' (or a sequence) -> modes in the canonical MODES order;
    'none' -> () (with --gradcheck-every: time the gradient check only)."""
    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m) for m in text]
    names = [m for m in names if m]
    if names == ["none"] or (not names and not isinstance(text, str)):
        return ()
    if not names:
        raise SvhnJaxError(f"no modes given; choose from {', '.join(MODES)}")
    unknown = [m for m in names if m not in MODES]
    if unknown:
        raise SvhnJaxError(f"unknown mode{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                           f"choose from {', '.join(MODES)}")
    return tuple(m for m in MODES if m in names)


def check_args(hidden: Sequence[int], batch: Sequence[int], epochs: int, n: int,
               eager_steps: int = 20, gradcheck_every: int = 0) -> None:
    """Clear errors for values the bench cannot run with."""
    if not isinstance(gradcheck_every, (int, np.integer)) or gradcheck_every < 0:
        raise SvhnJaxError(f"--gradcheck-every must be an integer >= 0, got {gradcheck_every!r}")
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


def roof(hidden: Sequence[int], in_dim: int, peak_size: int, stream_bytes: float) -> dict:
    """The machine's roofline, measured now: matmul peak, streaming bandwidth over
    `stream_bytes` (the data set's size), and the bandwidth at the size of each hidden
    size's state bytes (roofline module), with the load of other processes meanwhile."""
    from .modes import model_spec, run_config

    with machine.measure_load() as load:
        peak = machine.peak_gflops(peak_size)
        stream = machine.bandwidth_gbs(stream_bytes)
        state = {}
        for h in hidden:
            c = run_config(h, 1)
            size = roofline.state_bytes(roofline.param_count(model_spec(c), in_dim), c.optimizer)
            state[h] = (size, machine.bandwidth_gbs(size))
    return {"peak_gflops": peak, "stream_gbs": stream, "state": state, "busy": bool(load.get("busy"))}


def run(hidden: Sequence[int] = (128,), batch: Sequence[int] = (64, 512), epochs: int = 3,
        n: int = 73257, modes: Sequence[str] | str = MODES, seed: int = 0, *,
        eager_steps: int = 20, peak_size: int = 2048, gradcheck_every: int = 0,
        devices: Sequence[int] | str | None = None, progress: Callable[[str], None] | None = None,
        keep: list | None = None) -> dict:
    """Measure every mode for every (hidden, batch); returns the JSON report:

    {"peak_gflops", "peak_gflops_start", "peak_gflops_end", "stream_gbs", "stream_bytes",
     "state_gbs": [{"hidden", "bytes", "gbs"}, ...], "roof_busy", "device", "backend",
     "results": [record, ...], "skipped": [...], "ratios": {...}, "gradcheck": [record, ...],
     "scaling": {...} or null, "busy_warning"}

    The roofline (peak, bandwidths) is measured before and after the modes; the
    larger of each pair is used for the floors. The streaming bandwidth is measured
    over a working set of the data set's size (n * 3072 bytes), from which the
    batches are gathered.

    gradcheck_every > 0 also times the mission's training with a gradient check
    every that many steps against the same training without (`checks.measure`,
    one record per (hidden, batch) in "gradcheck").

    devices (device counts like (1, 2, 4), or "all"; None: off) also measures the
    scan modes data-parallel on a mesh of each count (`scaling.measure`, in
    "scaling", with the CPU caveat in its "note").

    `keep`, when given a list, receives every `Measurement` (with step losses and
    final parameters) in the order measured. `progress` gets one line per mode.
    """
    hidden, batch = tuple(hidden), tuple(batch)
    modes = parse_modes(modes)
    check_args(hidden, batch, epochs, n, eager_steps, gradcheck_every)
    if not modes and not gradcheck_every and devices is None:
        raise SvhnJaxError("nothing to measure: --modes none needs --gradcheck-every N or --devices N")
    devices = scaling.parse_devices(devices)
    if devices not in (None, "all"):
        scaling.check_batches(devices, batch)  # before JAX starts
    say = progress or (lambda msg: None)

    import jax

    counts = None if devices is None else scaling.resolve(devices, batch)

    data = make_data(n, seed)
    in_dim, stream_bytes = data.features.shape[1], data.images.nbytes
    start = roof(hidden, in_dim, peak_size, stream_bytes)
    say(f"peak {start['peak_gflops']:.1f} GFLOP/s, streaming {start['stream_gbs']:.1f} GB/s "
        f"({jax.default_backend()})")
    X, y = jax.device_put(data.images), jax.device_put(data.labels)
    F = jax.device_put(data.features) if "scan_features" in modes else None
    jax.block_until_ready((X, y, F))

    results, skipped = [], []
    for h in hidden:
        for b in batch:
            runners = {}
            for mode in modes:
                if mode in JAX_MODES:
                    runners[mode] = jax_runner(mode, h, b, F if mode == "scan_features" else X, y, data.fitted,
                                               epochs=epochs, seed=seed, eager_steps=eager_steps)
                elif (r := ref_runner(mode, h, b, data, seed=seed)) is not None:
                    runners[mode] = r
                else:
                    skipped.append({"mode": mode, "hidden": h, "batch": b,
                                    "reason": "torch is not installed (pip install -e \".[bench]\")"})
                    say(f"{mode:14s} H={h} B={b}: skipped (torch is not installed)")
            for mode, m in measure(runners, epochs).items():
                results.append(m.record)
                if keep is not None:
                    keep.append(m)
                say(f"{mode:14s} H={h} B={b}: {m.record['s_per_epoch']:.3f} s/epoch"
                    + (" (extrapolated)" if m.record["extrapolated"] else "")
                    + (" BUSY" if m.record["busy"] else ""))
    del F

    gradcheck = []
    for h in hidden:
        for b in batch:
            if gradcheck_every:
                gradcheck.append(checks.measure(h, b, data, X, y, gradcheck_every, epochs=epochs, seed=seed))
                say(f"gradcheck every {gradcheck_every} H={h} B={b}: {gradcheck[-1]['ratio']:.2f}x plain training")

    section = None
    if counts is not None:
        section = scaling.measure(hidden, batch, counts, data, X, y, epochs=epochs, seed=seed,
                                  progress=progress)

    end = roof(hidden, in_dim, peak_size, stream_bytes)
    peak, stream = (max(start[k], end[k]) for k in ("peak_gflops", "stream_gbs"))
    state = {h: (start["state"][h][0], max(start["state"][h][1], end["state"][h][1])) for h in hidden}
    for r in results:
        add_floors(r, peak, state[r["hidden"]][1], stream)
    roof_busy = start["busy"] or end["busy"]
    return {"peak_gflops": peak, "peak_gflops_start": start["peak_gflops"],
            "peak_gflops_end": end["peak_gflops"], "stream_gbs": stream, "stream_bytes": float(stream_bytes),
            "state_gbs": [{"hidden": h, "bytes": size, "gbs": gbs} for h, (size, gbs) in state.items()],
            "roof_busy": roof_busy, "device": device_name(), "backend": jax.default_backend(),
            "results": results, "skipped": skipped, "ratios": ratios(results), "gradcheck": gradcheck,
            "scaling": section,
            "busy_warning": roof_busy or any(bool(r["busy"]) for r in
                                             results + gradcheck + (section["records"] if section else []))}


# ---------------------------------------------------------------------- table


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def format_report(report: dict) -> str:
    """The human-readable table, the ratios and any warnings."""
    state = ", ".join(f"{s['gbs']:.1f} GB/s at H={s['hidden']}'s {s['bytes'] / 1e6:.1f} MB state"
                      for s in report["state_gbs"])
    lines = [f"device {report['device']} ({report['backend']}); matmul peak {report['peak_gflops']:.1f} "
             f"GFLOP/s (start {report['peak_gflops_start']:.1f}, end {report['peak_gflops_end']:.1f}); "
             f"memory {report['stream_gbs']:.1f} GB/s streaming {report['stream_bytes'] / 1e6:.0f} MB, "
             f"{state}", ""]
    head = (f"{'mode':14s} {'H':>5s} {'batch':>5s} {'in':>3s} {'compile s':>9s} {'s/epoch':>8s} {'spread':>6s} "
            f"{'samples/s':>10s} {'compute fl':>10s} {'memory fl':>9s} {'% floor':>7s} "
            f"{'other cores':>11s} {'loss':>8s}  note")
    if report["results"] or report["skipped"]:
        lines += [head, "-" * len(head)]
    for r in report["results"]:
        note = []
        if r["extrapolated"]:
            note.append(f"extrapolated from {r.get('eager_steps', '?')} steps")
        if r["runs_on"] != report["backend"]:
            note.append(f"on {r['runs_on']}")
        if r["busy"]:
            note.append("BUSY")
        inputs = "f32" if r["inputs"] == FEATURES else "u8"
        lines.append(f"{r['mode']:14s} {r['hidden']:5d} {r['batch']:5d} {inputs:>3s} {r['compile_s']:9.2f} "
                     f"{r['s_per_epoch']:8.3f} {100 * r['spread']:5.0f}% {r['samples_per_s']:10.0f} "
                     f"{r['compute_floor_s']:10.3f} {r['memory_floor_s']:9.3f} "
                     f"{100 * r['frac_floor']:6.1f}{r['bound'][0]} "
                     f"{_fmt(r['other_busy_cores'], '11.2f'):>11s} {r['loss']:8.3g}  {', '.join(note)}")
    for s in report["skipped"]:
        lines.append(f"{s['mode']:14s} {s['hidden']:5d} {s['batch']:5d}  skipped: {s['reason']}")
    if report["results"]:
        lines += ["", "s/epoch: median of the timed epochs; spread: (slowest - fastest) / median. in: u8 = "
                      "uint8 images normalised and shifted in the step (what svhn-jax train runs), f32 = "
                      "float32 features prepared beforehand (numpy and torch_eager: no shifts). compute fl, "
                      "memory fl: the epoch's floors in seconds (matmul FLOPs at the peak; bytes of "
                      "parameters, gradients, Adam slots and batch at the measured bandwidths); % floor: "
                      "the larger floor / s/epoch, c or m saying which floor it is."]
    keys = [k for k, rs in report["ratios"].items() if rs]
    if keys:
        lines += ["", "speed-ups t(B) / t(A) (> 1: A is faster)"]
        lines.append(f"  {'A vs B':32s}" + "".join(f"{k:>12s}" for k in keys))
        for a, b in RATIO_PAIRS:
            name = f"{a}_vs_{b}"
            if any(name in report["ratios"][k] for k in keys):
                lines.append(f"  {a + ' vs ' + b:32s}" + "".join(
                    f"{_fmt(report['ratios'][k].get(name), '.2f') + 'x':>12s}" for k in keys))
    if report["results"]:
        lines += ["", "loss: mean over the last timed epoch (eager: its last timed steps); "
                      "cross-entropy for JAX, + L2 for numpy/torch."]
    lines += checks.format_records(report.get("gradcheck", []))
    lines += scaling.format_section(report.get("scaling"))
    if any(r["extrapolated"] for r in report["results"]):
        lines.append("eager: s/epoch extrapolated from the median of its timed steps.")
    if report["busy_warning"]:
        during = (["the roofline measurement"] if report["roof_busy"] else []) + (
            ["at least one mode (BUSY above)"] if any(r["busy"] for r in report["results"]) else [])
        lines.append(f"WARNING: other processes kept the CPU busy during {' and '.join(during) or 'the run'}; "
                     "absolute times, floors and ratios may be off. Rerun on a quiet machine.")
    return "\n".join(lines)

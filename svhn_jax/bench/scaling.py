"""`svhn-jax bench --devices 1,2,4`: what data parallelism costs or gains per epoch.

For every hidden size H and global batch B, both scan modes (scan_manual,
scan_autodiff) train whole epochs with `step.parallel.run_steps` on a mesh of D
devices for each requested D: the same compiled epoch scan as `svhn-jax train
--devices D`, the global batch B split along the mesh axis `data` (B / D rows
per device), the training set stored split by rows. The plain single-device
`train.run_steps` (no mesh) runs first, as the reference of what the mesh
itself costs on one device. The data are the bench's uint8 images, normalised
and shifted per batch inside the step, with the mission's settings
(`modes.run_config`), as `svhn-jax train` runs them and the bench's scan modes
time them.

Protocol as for the scan modes (package docstring): epoch 0 (with compilation),
a warm-up epoch, then `epochs` timed epochs; s_per_epoch is their median. Each
D is a new compiled program. Every run starts from the same initialisation and
trains on the same global batch order, so the step losses of all device counts
agree up to float32 summation order: max_loss_diff_vs_1 (the largest
|loss_D - loss_1| over every step run, epoch 0 included) is a free correctness
check of the sharded step.

Per record, t_D being s_per_epoch on D devices and t_1 on the 1-device mesh:

    samples_per_s             n / t_D
    samples_per_s_per_device  n / t_D / D
    speedup                   t_1 / t_D
    efficiency                (t_1 / t_D) / D: 1 is perfect scaling
    speedup_vs_no_mesh        t_nomesh / t_D (on one device: 1 / the mesh's overhead)

The 1-device mesh is always measured (added when not asked for): without it
there is no efficiency. On the CPU backend the D devices are forced host devices
(JAX_NUM_CPU_DEVICES) that share the machine's cores: the figures then measure
the overhead of data parallelism, not a speed-up, and the report says so.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable, Sequence

import numpy as np

from ..errors import SvhnJaxError
from . import machine, modes

SCAN_MODES = ("scan_manual", "scan_autodiff")


# ------------------------------------------------------------------ arguments


def parse_devices(text) -> tuple[int, ...] | str | None:
    """'1,2,4' (or a sequence of counts) -> (1, 2, 4) (sorted, without repeats);
    'all' -> 'all'; None -> None (off). No JAX here: a typo fails before anything starts."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip() == "all":
        return "all"
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else map(str, text))]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise SvhnJaxError(f"--devices must be device counts like 1,2,4 or all, got {text!r}")
    return tuple(sorted({int(p) for p in parts}))


def check_batches(counts: Sequence[int], batch: Sequence[int]) -> None:
    """Every global batch must split evenly over every device count."""
    for d in counts:
        for b in batch:
            if b % d:
                ok = [c for c in counts if b % c == 0]
                raise SvhnJaxError(
                    f"the batch of {b} does not split evenly over {d} devices; use a --batch that "
                    f"is a multiple of {d} (e.g. {max(d, b // d * d)}) or --devices "
                    f"{','.join(map(str, ok)) or '1'}")


def resolve(devices, batch: Sequence[int]) -> tuple[int, ...]:
    """The device counts to measure, 1 included: 'all' is 1, 2, 4, ... below the
    device count, and the count itself. Errors when JAX sees fewer devices than
    asked for (the message says how to get them) or a batch does not split."""
    import jax

    from ..step import mesh as meshes

    if devices == "all":
        available = jax.device_count()
        counts = {1 << k for k in range(available.bit_length()) if 1 << k < available} | {available}
    else:
        counts = set(devices)
        meshes.device_count(max(counts), stacked=False)  # the error names JAX_NUM_CPU_DEVICES on a CPU
    counts = tuple(sorted(counts | {1}))
    check_batches(counts, batch)
    return counts


def cpu_note(backend: str, counts: Sequence[int]) -> str | None:
    """The caveat the report must carry on the CPU backend; None elsewhere."""
    if backend != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"CPU backend: the devices are forced host devices (JAX_NUM_CPU_DEVICES={max(counts)}) "
            f"sharing this machine's {cores} cores, so these figures measure the overhead of data "
            f"parallelism, not a speed-up")


# ------------------------------------------------------------------------ run


def _measure_mesh(mode: str, hidden: int, batch: int, place, X, y, fitted: dict, n: int, *, epochs: int,
                  seed: int):
    """One scan mode on the mesh, X and y from mesh.shard_rows -> (record, step losses)."""
    from ..data import preprocess
    from ..step import mesh as meshes
    from ..step import parallel, train

    c = modes.run_config(hidden, batch, "autodiff" if mode.endswith("autodiff") else "manual", seed, 2 + epochs)
    cfg, hp = modes.jax_setup(c, n, fitted)
    spe = train.steps_per_epoch(n, batch)
    in_dim = preprocess.input_dim(fitted)
    state = train.init_state(seed, cfg, in_dim, hp)
    orders = modes.epoch_orders(state.key, n, batch, 2 + epochs)
    state, hp, orders = meshes.replicate((state, hp, orders), place)  # before the timers, once
    run_steps = partial(parallel.run_steps, place=place)
    warm, epoch, final = modes.scan_epochs(state, hp, X, y, orders, cfg, spe, run_steps)
    with machine.measure_load() as load:
        compile_s = warm()
        times = [epoch() for _ in range(epochs)]
    _, losses = final()
    record = modes.make_record(mode, c, n, spe, in_dim, int(X.shape[1]), compile_s, times, load,
                               loss=float(np.mean(np.asarray(losses[-1]), dtype=np.float64)),
                               loss_includes_l2=False, extrapolated=False, runs_on=None, inputs=modes.IMAGES)
    return record, np.concatenate([np.asarray(v, np.float32) for v in losses])


def _fields(record: dict, devices: int, mesh: bool) -> dict:
    """The fields of a modes.make_record record that apply here, and the device count's."""
    keep = ("mode", "hidden", "batch", "n", "images_per_epoch", "compile_s", "s_per_epoch",
            "samples_per_s", "epoch_s", "loss", "other_busy_cores", "busy")
    return {**{k: record[k] for k in keep}, "devices": devices, "mesh": mesh,
            "per_device_batch": record["batch"] // devices,
            "samples_per_s_per_device": record["samples_per_s"] / devices}


def measure(hidden: Sequence[int], batch: Sequence[int], counts: Sequence[int], data, X, y, *,
            epochs: int = 3, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Every scan mode for every (hidden, batch), without a mesh and on a mesh of
    each of `counts` devices (1 among them). data: the bench's modes.Data (host);
    X, y its images and labels on the default device (for the no-mesh reference). Returns

    {"devices": counts, "modes", "records": [record, ...], "max_loss_diff", "note"}

    with records grouped by (hidden, batch, mode): the no-mesh record first
    (mesh false, devices 1, speedup and efficiency null), then D ascending.
    """
    import jax

    from ..step import mesh as meshes

    say = progress or (lambda msg: None)
    n = len(data.labels)
    measured, losses = {}, {}
    for d in (None,) + tuple(counts):  # one copy of the sharded set at a time
        if d is not None:
            place = meshes.data_placement(d)
            Xs, ys = meshes.shard_rows(data.images, data.labels, place)
        for h in hidden:
            for b in batch:
                for mode in SCAN_MODES:
                    if d is None:
                        m = modes.measure_jax(mode, h, b, X, y, data.fitted, epochs=epochs, seed=seed)
                        record, steps = _fields(m.record, 1, False), m.step_losses
                    else:
                        record, steps = _measure_mesh(mode, h, b, place, Xs, ys, data.fitted, n, epochs=epochs,
                                                      seed=seed)
                        record = _fields(record, d, True)
                    measured[h, b, mode, d], losses[h, b, mode, d] = record, steps
                    say(f"{mode:14s} H={h} B={b} devices={d or 'no mesh'}: "
                        f"{record['s_per_epoch']:.3f} s/epoch" + (" BUSY" if record["busy"] else ""))
        if d is not None:
            del Xs, ys

    records = []
    for h in hidden:
        for b in batch:
            for mode in SCAN_MODES:
                t1, t0 = measured[h, b, mode, 1]["s_per_epoch"], measured[h, b, mode, None]["s_per_epoch"]
                ref = losses[h, b, mode, 1]
                for d in (None,) + tuple(counts):
                    r = measured[h, b, mode, d]
                    t = r["s_per_epoch"]
                    r["speedup"] = None if d is None else t1 / t
                    r["efficiency"] = None if d is None else t1 / t / d
                    r["speedup_vs_no_mesh"] = t0 / t
                    r["max_loss_diff_vs_1"] = float(np.max(np.abs(losses[h, b, mode, d] - ref)))
                    records.append(r)
    return {"devices": list(counts), "modes": list(SCAN_MODES), "records": records,
            "max_loss_diff": max(r["max_loss_diff_vs_1"] for r in records),
            "note": cpu_note(jax.default_backend(), counts)}


# ---------------------------------------------------------------------- table


def format_section(section: dict | None) -> list[str]:
    """The report's lines for the scaling measurement (none when it did not run)."""
    if not section:
        return []
    head = (f"  {'mode':14s} {'H':>5s} {'batch':>5s} {'devices':>7s} {'B/dev':>5s} {'s/epoch':>8s} "
            f"{'samples/s':>10s} {'per device':>10s} {'speed-up':>8s} {'effic.':>6s} "
            f"{'vs no mesh':>10s} {'max |dloss|':>11s}")
    lines = ["", "data-parallel scaling: the global batch split over a mesh of D devices; "
                 "efficiency = (t_1 / t_D) / D against the 1-device mesh", head]
    for r in section["records"]:
        speedup, efficiency = ((f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}") if r["mesh"]
                               else ("-", "-"))
        lines.append(f"  {r['mode']:14s} {r['hidden']:5d} {r['batch']:5d} "
                     f"{str(r['devices']) if r['mesh'] else 'no mesh':>7s} {r['per_device_batch']:5d} "
                     f"{r['s_per_epoch']:8.3f} {r['samples_per_s']:10.0f} "
                     f"{r['samples_per_s_per_device']:10.0f} {speedup:>8s} {efficiency:>6s} "
                     f"{r['speedup_vs_no_mesh']:9.2f}x {r['max_loss_diff_vs_1']:11.1e}"
                     + ("  BUSY" if r["busy"] else ""))
    lines.append(f"  losses agree across device counts: largest |loss_D - loss_1| over every step "
                 f"{section['max_loss_diff']:.1e} (float32 summation order)")
    if section["note"]:
        lines.append(f"  NOTE: {section['note']}.")
    return lines

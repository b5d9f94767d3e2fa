"""`svhn-jax bench --gradcheck-every N`: what the per-step gradient check costs.

The mission's network and training settings (`svhn-jax train --preset
mission`, `modes.run_config`): Dense(1024 -> H) - ReLU - Dense(10) on the
bench's uint8 images, turned to luminance and standardised per image inside
the step, hand-written gradients, Adam lr 3e-3 on a cosine schedule, L2 3e-3,
batch B, random shifts of 2 pixels.

The same epochs (same initial state, same batch order) are compiled twice,
without checks and with `gradcheck_every` = N, and timed alternately, plain
then checked, epoch after epoch, after one warm-up epoch each (compilation
excluded): a load that comes and goes hits both alike.
ratio = median checked epoch / median plain epoch.
"""

from __future__ import annotations

import statistics
import time

from . import machine
from .modes import jax_setup, run_config


def measure(hidden: int, batch: int, data, X, y, every: int, *, epochs: int = 3, seed: int = 0) -> dict:
    """Seconds per epoch of the mission's training with and without a gradient
    check every `every` steps, measured alternately, on X, y (the device arrays of
    data.images and data.labels, a modes.Data); returns the record

    {"hidden", "batch", "n", "every", "checks_per_epoch", "s_per_epoch_plain",
     "s_per_epoch_checked", "ratio", "epoch_s_plain", "epoch_s_checked",
     "other_busy_cores", "busy"}
    """
    import jax

    from ..data import preprocess
    from ..step import train

    n = len(data.labels)
    spe = train.steps_per_epoch(n, batch)
    c = run_config(hidden, batch, seed=seed, epochs=epochs + 1)
    (plain, hp), (checked, _) = (jax_setup(c.replace(gradcheck_every=k), n, data.fitted) for k in (0, every))
    cfgs = (plain, checked)
    states = [train.init_state(seed, cfg, preprocess.input_dim(data.fitted), hp) for cfg in cfgs]
    orders = [jax.block_until_ready(train.epoch_order(states[0].key, e, n, batch)) for e in range(epochs + 1)]
    times = ([], [])

    def epoch(k, e):
        t0 = time.perf_counter()
        states[k], out = train.run_steps(states[k], hp, X, y, orders[e], 0, cfgs[k], spe)
        jax.block_until_ready((states[k], out))
        if e:
            times[k].append(time.perf_counter() - t0)

    with machine.measure_load() as load:
        for e in range(epochs + 1):
            for k in (0, 1):
                epoch(k, e)
    s_plain, s_checked = statistics.median(times[0]), statistics.median(times[1])
    return {"hidden": int(hidden), "batch": int(batch), "n": int(n), "every": int(every),
            "checks_per_epoch": len(range(0, spe, every)),
            "s_per_epoch_plain": s_plain, "s_per_epoch_checked": s_checked, "ratio": s_checked / s_plain,
            "epoch_s_plain": times[0], "epoch_s_checked": times[1],
            "other_busy_cores": load.get("other_busy_cores"), "busy": load.get("busy")}


def format_records(records: list[dict]) -> list[str]:
    """The report's lines for the gradient check's cost."""
    if not records:
        return []
    lines = ["", "per-step gradient check (mission network: grayscale 1024 inputs, Adam, cosine, "
                 "shift 2, hand-written gradients), measured alternately with plain training:",
             f"  {'H':>5s} {'batch':>5s} {'every':>5s} {'plain s/epoch':>13s} {'checked s/epoch':>15s} "
             f"{'ratio':>6s}  note"]
    for r in records:
        lines.append(f"  {r['hidden']:5d} {r['batch']:5d} {r['every']:5d} {r['s_per_epoch_plain']:13.3f} "
                     f"{r['s_per_epoch_checked']:15.3f} {r['ratio']:5.2f}x  {'BUSY' if r['busy'] else ''}")
    return lines

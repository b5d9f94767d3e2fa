"""What TensorBoard events cost a mission run: the same run with and without them,
alternately, in one process.

    python scripts/tb_cost.py [--data synthetic] [--repeats 3] [--json]

Each repeat trains the mission preset twice into fresh run folders, once with events
(scalars every epoch, histograms of weights and gradients every 5 epochs, images and
settings at the end: everything `svhn-jax train` writes by default) and once with
--no-tensorboard. Reported: the median of each, over the repeats, of the run's training
time (what metrics.json calls train_seconds: compiled segments, evaluation, event
writing) and of the whole train_run call (data, plots and closing the event file too),
and their ratios. Timings drift on shared machines: read the ratio, and the load of other
processes that bench.machine measures alongside.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from svhn_jax import config
from svhn_jax.bench import machine
from svhn_jax.run import launch as runs


def measure(data: str, repeats: int) -> dict:
    base = config.make("mission", data=data, synthetic_n=8000)
    times = {"events": [], "none": []}
    token = machine.load_start()
    with tempfile.TemporaryDirectory(prefix="tb_cost_") as tmp:
        for r in range(repeats):
            for name, on in (("events", True), ("none", False)):
                t0 = time.perf_counter()
                m = runs.train_run(base.replace(tensorboard=on), Path(tmp) / f"{name}{r}", quiet=True)
                times[name].append((m["train_seconds"], time.perf_counter() - t0))
    load = machine.load_stop(token)
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    return {"data": data, "repeats": repeats,
            "train_seconds": {k: v[0] for k, v in med.items()},
            "wall_seconds": {k: v[1] for k, v in med.items()},
            "ratio_train": med["events"][0] / med["none"][0],
            "ratio_wall": med["events"][1] / med["none"][1], "other_load": load}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="any --data of svhn-jax train")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = measure(args.data, args.repeats)
    if args.json:
        print(json.dumps(r))
        return
    print(f"mission run on {r['data']}, median of {r['repeats']}:")
    for k in ("events", "none"):
        print(f"  {k:6s} training {r['train_seconds'][k]:6.2f} s   whole run {r['wall_seconds'][k]:6.2f} s")
    print(f"  with events / without: training {r['ratio_train']:.3f}x, whole run {r['ratio_wall']:.3f}x")


if __name__ == "__main__":
    main()

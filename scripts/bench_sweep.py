"""Benchmark: the seed notebook's grid as one vmapped sweep vs one configuration at a time.

The grid is BatchNorm off/on x lr 1e-3, 1e-2 x Adam, Momentum (hidden 128, batch 64,
10 epochs) on synthetic SVHN-shaped data (73,257 images by default). Both ways use
the same code, `tune.train_group`:

    vmapped      4 groups (BatchNorm x optimizer) of 2 learning rates, each group
                 trained by one compiled, jax.vmap-ed epoch (what `svhn-jax sweep` does)
    sequential   8 groups of 1 configuration, one after another

and they are timed back to back in one process (compilation included: it is part of
what a user waits for), with the CPU load from other processes recorded. Timings on
these shared 2-core machines drift by 30% between runs; the ratio is the number to
compare.

    python scripts/bench_sweep.py [--n 73257] [--epochs 10] [--rgb] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time

from svhn_jax import atomic, config, data, errors
from svhn_jax.bench import machine
from svhn_jax.tune import sweep as tune

GRID = {"batchnorm": ["none", "before"], "optimizer": ["adam", "momentum"], "lr": [1e-3, 1e-2]}


def vmapped_groups(base: config.RunConfig) -> list[list[config.RunConfig]]:
    """The grid on top of `base`, in the groups a sweep trains at once: those that
    differ only in learning rate (one group per BatchNorm x optimizer)."""
    configs = [config.make(base=base, **p) for p in tune.expand(GRID)]
    keys = dict.fromkeys((c.batchnorm, c.optimizer) for c in configs)
    return [[c for c in configs if (c.batchnorm, c.optimizer) == k] for k in keys]


def timed(groups, parts) -> tuple[float, list[dict], dict]:
    token = machine.load_start()
    t = time.perf_counter()
    cache = {}
    results = [r for g in groups for r in tune.train_group(g, parts, cache)]
    return time.perf_counter() - t, results, machine.load_stop(token)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=73257, help="synthetic training images (default 73257)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rgb", action="store_true",
                   help="RGB inputs scaled to [-1, 1] (3072 features, the seed notebook's) instead "
                        "of the project's default grayscale + per-image standardisation (1024)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        prep = {"preprocess": "scale", "grayscale": False} if args.rgb else {}
        base = config.make(data="synthetic", synthetic_n=args.n, hidden=(128,), batch=64,
                           epochs=args.epochs, **prep)
        vmapped = vmapped_groups(base)
        configs = [c for group in vmapped for c in group]
        # Exactly n training images an epoch (a split would train on 70% of them),
        # plus a separate synthetic validation set.
        parts = {"train": data.synthetic(args.n, 0), "val": data.synthetic(max(args.n // 10, 100), 1)}
        t_vmap, r_vmap, load_vmap = timed(vmapped, parts)
        t_seq, r_seq, load_seq = timed([[c] for c in configs], parts)
    except errors.SvhnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    key = lambda r: (r["config"].batchnorm, r["config"].optimizer, r["config"].lr)
    same = {key(a): abs(a["best_val_acc"] - b["best_val_acc"])
            for a, b in zip(sorted(r_vmap, key=key), sorted(r_seq, key=key))}
    report = {"n_train": len(parts["train"][1]), "epochs": args.epochs,
              "features": 3072 if args.rgb else 1024, "configurations": len(configs),
              "vmapped_s": t_vmap, "sequential_s": t_seq, "speedup": t_seq / t_vmap,
              "max_val_acc_difference": max(same.values()),
              "other_busy_cores": [load_vmap["other_busy_cores"], load_seq["other_busy_cores"]]}
    if args.json:
        print(atomic.strict_json(report, indent=None))
    else:
        print(f"seed grid, {len(configs)} configurations x {args.epochs} epochs on "
              f"{report['n_train']} synthetic training images ({report['features']} features):")
        print(f"  vmapped (4 groups of 2): {t_vmap:7.1f} s")
        print(f"  one at a time (8 x 1):   {t_seq:7.1f} s")
        print(f"  ratio sequential / vmapped: {report['speedup']:.2f}x")
        print(f"  largest validation-accuracy difference between the two: {report['max_val_acc_difference']:.4f}")
        busy = [b for b in report["other_busy_cores"] if b]
        if busy and max(busy) > machine.BUSY_THRESHOLD_CORES:
            print(f"WARNING: other processes used up to {max(busy):.2f} cores: timings are unreliable")
    return 0


if __name__ == "__main__":
    sys.exit(main())

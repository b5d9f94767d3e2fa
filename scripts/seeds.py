"""Train one configuration with several seeds and report accuracy as mean and spread.

    python scripts/seeds.py --data ../shared/data/svhn_test_8k.npz --preset mission --seeds 0-9 --out runs/seeds_mission

Each seed S is the run `svhn-jax train ... --seed S --out OUT/seed_S` (same settings,
same split: the partition depends on --split-seed only, so every seed is scored on the
same held-out images). A seed changes the initialisation, the data order and the
augmentation. A run's numbers, its params_sha256 included, repeat bit for bit on the
same machine with the same JAX/XLA build; on another processor XLA's CPU code rounds
some float32 sums differently, so single runs differ a little while the mean and
spread over seeds carry over.

Prints a Markdown table (one row per seed, then the mean and the sample standard
deviation) that the README quotes, and writes:

    OUT/seed_S/        each seed's run folder
    OUT/seeds.csv      seed, best_val_acc, test_acc, best_epoch, train_seconds, params_sha256
    OUT/seeds.json     the rows, mean and standard deviation of the accuracies, the
                       settings and versions

Takes `svhn-jax train`'s settings flags (--preset, --epochs, --lr, ...) but --seed.
Exit codes as `svhn-jax train`'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from svhn_jax import atomic, config, errors, flags
from svhn_jax.run import folder as runfolder

ACCURACIES = ("best_val_acc", "test_acc")


def seed_list(text: str) -> list[int]:
    """'0-9' -> [0, ..., 9]; '0,3,5' -> [0, 3, 5]."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0-9 or 0,3,5, got {text!r}")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected two or more distinct seeds >= 0, got {text!r}")
    return seeds


def build_parser() -> flags.Parser:
    p = flags.Parser(prog="seeds.py", description="One configuration trained with each seed; "
                     "validation and held-out test accuracy as mean and spread over the seeds.")
    p.add_argument("--seeds", type=seed_list, required=True, help="e.g. 0-9 or 0,3,5")
    p.add_argument("--out", required=True, help="folder for the runs and the table (must not exist)")
    flags.add_settings(p, "train")
    return p


def summarize(rows: list[dict]) -> dict:
    """Mean and sample standard deviation of each accuracy over the rows."""
    return {k: {"mean": statistics.fmean(r[k] for r in rows), "std": statistics.stdev(r[k] for r in rows)}
            for k in ACCURACIES}


def table(rows: list[dict], stats: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}%"
    lines = ["| seed | validation | held-out test | params_sha256 |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['seed']} | {pct(r['best_val_acc'])} | {pct(r['test_acc'])} | "
              f"`{r['params_sha256'][:12]}` |" for r in rows]
    lines.append(f"| mean ± std of {len(rows)} | " + " | ".join(
        f"{pct(stats[k]['mean'])} ± {100 * stats[k]['std']:.2f}" for k in ACCURACIES) + " | |")
    return "\n".join(lines)


def run(args) -> int:
    if args.seed is not None:
        raise errors.SvhnJaxError("--seed is one seed; pass the seeds as --seeds")
    base, out = flags.make_config(args, config.TRAIN), Path(args.out)
    if out.exists():
        raise errors.SvhnJaxError(f"--out {out} already exists; choose another path")
    from svhn_jax.run import launch as runs

    rows = []
    for seed in args.seeds:
        m = runs.train_run(base.replace(seed=seed), out / f"seed_{seed}", quiet=True)
        rows.append({"seed": seed, **{k: m[k] for k in ACCURACIES}, "best_epoch": m["best_epoch"],
                     "train_seconds": m["train_seconds"], "params_sha256": m["params_sha256"]})
        runfolder.say(f"seed {seed}: validation {m['best_val_acc']:.2%}, test {m['test_acc']:.2%}")
    stats = summarize(rows)
    runfolder.write_csv(out / "seeds.csv", rows)
    derived = runfolder.read_run(out / f"seed_{args.seeds[0]}")[1]
    atomic.write_json(out / "seeds.json", {"rows": rows, **stats, "settings": config.to_json(base),
                                           **{k: derived[k] for k in ("svhn_jax_version", "jax_version",
                                                                      "backend")}})
    print(table(rows, stats))
    return errors.EXIT_OK


def main(argv=None) -> int:
    return errors.run(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

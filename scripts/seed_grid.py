"""Reproduce the seed notebook's experiment grid, end to end.

    python scripts/seed_grid.py --data ../shared/data/svhn_test_8k.npz --out /tmp/seed_grid

The grid is the notebook's 2 x 2 x 2:

    BatchNorm   none, before      (before = Dense-BN-ReLU; --bn-placement after gives the
                                   notebook's own Dense-ReLU-BN)
    lr          1e-3, 1e-2
    optimizer   adam, momentum    (momentum: v = 0.9 v + g, p -= lr v)

each trained for 10 epochs (constant learning rate, no L2, batch 64, one hidden layer
of 128), like the notebook. The notebook fed RGB pixels scaled to [-1, 1], so the
defaults here are `--preprocess scale --no-grayscale` (the package's own training
default is per-image standardised grayscale; pass `--grayscale --preprocess image`
for that). `--lrs` and `--optimizers` change the grid's axes (default: the notebook's).

This is `svhn_jax.tune.sweep` with the notebook's settings, the same as

    svhn-jax sweep --data D --out DIR --batchnorm none,before --lr 1e-3,1e-2
        --optimizer adam,momentum --hidden 128 --batch 64 --epochs 10
        --schedule constant --reg 0 --preprocess scale --no-grayscale --no-final

The configurations that differ only in learning rate train at once (one vmapped,
compiled program per BatchNorm x optimizer group). The grid sees the training and
validation parts only, and the table is sorted by best validation accuracy: choose
a configuration by that column. `--final` then retrains the chosen configuration
alone into DIR/final, an ordinary run folder, and scores it once on test. A
configuration that diverges (non-finite loss) is marked "diverged", listed last,
and the grid goes on.

Outputs in DIR (tune.sweep's):

    results.csv    one row per configuration (also printed): best and final validation
                   numbers, final train loss, status; ranked by best validation accuracy
    results.json   the same rows, the chosen configuration and, under "settings",
                   the settings every configuration shares
    curves.png     every configuration's validation loss and accuracy per epoch
    lr_sweep.png   final validation loss and best accuracy against learning rate
                   (when the grid has more than one)
    heatmap.png    best validation accuracy over the two axes, when only two vary
    final/         with --final: the chosen configuration's run folder (test accuracy
                   in final/metrics.json, train and val curves in final/*.png)

What changed from the earlier version of this script, which trained each
configuration as a separate run: no run folder per configuration (so no
per-configuration test accuracy: test is touched once, by --final), one overlay
of every configuration's validation curves instead of a train-and-val panel per
configuration, --seed seeds the initialisation and batch order while the
train/validation/test partition keeps split seed 0, and interrupting writes no
partial table.

Exit codes: 0 done (diverged configurations included), 2 bad argument,
3 data missing or invalid, 5 every configuration diverged, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svhn_jax import config, errors
from svhn_jax.flags import int_list

GRID = {"lr": "1e-3,1e-2", "optimizer": "adam,momentum"}   # the notebook's axes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seed_grid.py",
        description="The seed notebook's grid: BatchNorm none/before x lr 1e-3, 1e-2 x adam, "
                    "momentum, as one sweep chosen on validation: a results table and curves.",
        epilog="Defaults match the seed notebook: RGB pixels scaled to [-1, 1] "
               "(--preprocess scale --no-grayscale), Dense(128)-ReLU-Dense, batch 64, 10 epochs, "
               "constant learning rate, no L2. Choose a configuration by best_val_acc; --final "
               "scores the chosen one once on test.")
    p.add_argument("--data", required=True,
                   help="an .npz with X (N,32,32,3) uint8 and y, a folder of SVHN .mat files, "
                        "'svhn' (prepared tensorflow-datasets) or 'synthetic'")
    p.add_argument("--data-dir", help="tensorflow-datasets folder for --data svhn")
    p.add_argument("--out", required=True, help="folder for the grid (must be new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out; a previous grid's files in it are replaced")
    p.add_argument("--epochs", type=int, default=10, help="epochs per configuration (default 10)")
    p.add_argument("--hidden", type=int_list, default=(128,),
                   help="hidden layer widths, e.g. 128 or 512,256 (default 128)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation and batch order (default 0)")
    p.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=False,
                   help="luminance instead of RGB (default: RGB, as the notebook)")
    p.add_argument("--preprocess", default="scale", choices=config.PREPROCESS,
                   help="input normalisation (default scale: pixels to [-1, 1], as the notebook)")
    p.add_argument("--bn-placement", default="before", choices=("before", "after"),
                   help="where BatchNorm goes when on: before the ReLU (default) or after it "
                        "(the seed notebook's placement)")
    p.add_argument("--lrs", default=GRID["lr"],
                   help=f"learning rates of the grid (default {GRID['lr']}, the notebook's)")
    p.add_argument("--optimizers", default=GRID["optimizer"],
                   help=f"optimizers of the grid, among {', '.join(config.OPTIMIZERS)} "
                        f"(default {GRID['optimizer']}, the notebook's)")
    p.add_argument("--final", action="store_true",
                   help="retrain the chosen configuration into DIR/final and score it once on test")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def run_grid(args) -> int:
    out = Path(args.out)
    base = config.make(data=args.data, data_dir=args.data_dir, hidden=args.hidden,
                       batch=args.batch, epochs=args.epochs, seed=args.seed,
                       grayscale=args.grayscale, preprocess=args.preprocess,
                       schedule="constant", reg=0.0)
    from svhn_jax.tune import sweep as tune

    axes = {"batchnorm": ["none", args.bn_placement],
            "lr": tune.parse_values("lr", args.lrs),
            "optimizer": tune.parse_values("optimizer", args.optimizers)}
    summary = tune.sweep(base, axes, out, final=args.final, overwrite=args.overwrite,
                         quiet=args.quiet)

    print(tune.format_table(summary["results"]))
    print(f"\n{summary['configurations']} configurations in {summary['groups']} compiled groups, "
          f"{summary['sweep_seconds']:.1f} s; chosen on validation: "
          + ", ".join(f"{k}={summary['best'][k]}" for k in axes))
    if "final" in summary:
        print(f"final run {summary['final_run']}: test accuracy "
              f"{summary['final'].get('test_acc', float('nan')):.2%} (test touched once)")
    print(f"results: {out}/results.csv, results.json, "
          + ", ".join(sorted(p.name for p in out.glob("*.png"))))
    return errors.EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return errors.run(run_grid, args)


if __name__ == "__main__":
    sys.exit(main())

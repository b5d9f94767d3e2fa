"""Reproduce the seed notebook's experiment grid, end to end.

    python scripts/seed_grid.py --data ../shared/data/svhn_test_8k.npz --out /tmp/seed_grid

The grid is the notebook's 2 x 2 x 2:

    BatchNorm   off, on           (on = Dense-BN-ReLU; --bn-placement after gives the
                                   notebook's own Dense-ReLU-BN)
    lr          1e-3, 1e-2
    optimizer   adam, momentum    (momentum: v = 0.9 v + g, p -= lr v)

each trained for 10 epochs (constant learning rate, no L2, batch 64, one hidden layer
of 128), like the notebook. The notebook fed RGB pixels scaled to [-1, 1], so the
defaults here are `--preprocess scale --no-grayscale` (the package's own training
default is per-image standardised grayscale; pass `--grayscale --preprocess image`
for that).

Every configuration is an ordinary run folder, DIR/<name>, written by
`svhn_jax.runs.train_run` (so `svhn-jax evaluate --run DIR/<name>` works on each).
Each run evaluates the test part once, at its end, with its best-validation
parameters; the table is sorted by best validation accuracy, and a configuration
should be chosen by that column, never by test accuracy. A configuration that
diverges (non-finite loss) is recorded as "diverged" (listed after the completed
ones, with no test accuracy) and the grid goes on. `--lrs` and `--optimizers`
change the grid's axes (default: the notebook's).

Outputs in DIR:

    <name>/               one run folder per configuration
    results.csv           the table (also printed), one row per configuration
    results.json          the same rows, plus the settings and the selected config
    loss_curves.png       train and val loss per epoch, one panel per configuration
    accuracy_curves.png   train and val accuracy per epoch, one panel per configuration
    val_overlay.png       every configuration's val loss and accuracy on shared axes

Exit codes: 0 done (diverged configurations included), 2 bad argument,
3 data missing or invalid, 130 interrupted (the rows finished so far are written).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

from svhn_jax import errors
from svhn_jax.cli import int_list

GRID_BN = ("off", "on")
GRID_LR = (1e-3, 1e-2)
GRID_OPTIMIZERS = ("adam", "momentum")
COLUMNS = ("rank", "name", "bn", "lr", "optimizer", "best_val_acc", "best_epoch",
           "final_train_loss", "final_val_loss", "test_acc", "seconds", "status", "selected")
RUN_FILES = ("config.json", "metrics.json")  # a folder holding one of these is a run folder


def float_list(text: str) -> list[float]:
    """'1e-3,1e-2' -> [0.001, 0.01] (positive, finite)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1e-3,1e-2, got {text!r}")
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"learning rates must be positive numbers, got {text!r}")
    return values


def optimizer_list(text: str) -> list[str]:
    """'adam,momentum' -> ['adam', 'momentum']."""
    known = ("sgd", "momentum", "nesterov", "rmsprop", "adam")
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in known]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"optimizers must be among {', '.join(known)}, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seed_grid.py",
        description="The seed notebook's grid: BatchNorm off/on x lr 1e-3, 1e-2 x adam, momentum, "
                    "one run folder per configuration, a results table and overlaid curves.",
        epilog="Defaults match the seed notebook: RGB pixels scaled to [-1, 1] "
               "(--preprocess scale --no-grayscale), Dense(128)-ReLU-Dense, batch 64, 10 epochs, "
               "constant learning rate, no L2. Choose a configuration by best_val_acc; test_acc "
               "is measured once per run (best-validation parameters) for reference only.")
    p.add_argument("--data", required=True,
                   help="an .npz with X (N,32,32,3) uint8 and y, a folder of SVHN .mat files, "
                        "'svhn' (prepared tensorflow-datasets) or 'synthetic'")
    p.add_argument("--data-dir", help="tensorflow-datasets folder for --data svhn")
    p.add_argument("--out", required=True, help="folder for the grid (must be new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out; the grid's run folders in it are replaced")
    p.add_argument("--epochs", type=int, default=10, help="epochs per configuration (default 10)")
    p.add_argument("--hidden", type=int_list, default=[128],
                   help="hidden layer widths, e.g. 128 or 512,256 (default 128)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data split, initialisation and batch order (default 0)")
    p.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=False,
                   help="luminance instead of RGB (default: RGB, as the notebook)")
    p.add_argument("--preprocess", default="scale", choices=("scale", "channel", "image"),
                   help="input normalisation (default scale: pixels to [-1, 1], as the notebook)")
    p.add_argument("--bn-placement", default="before", choices=("before", "after"),
                   help="where BatchNorm goes when on: before the ReLU (default) or after it "
                        "(the seed notebook's placement)")
    p.add_argument("--lrs", type=float_list, default=list(GRID_LR),
                   help="learning rates of the grid (default 1e-3,1e-2, the notebook's)")
    p.add_argument("--optimizers", type=optimizer_list, default=list(GRID_OPTIMIZERS),
                   help="optimizers of the grid (default adam,momentum, the notebook's)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    return p


def grid(args) -> list[dict]:
    """The configurations, in the notebook's order: name, bn, lr, optimizer, batchnorm."""
    out = []
    for bn in GRID_BN:
        placement = "none" if bn == "off" else args.bn_placement
        bn_label = "off" if bn == "off" else f"on-{placement}"
        for lr in args.lrs:
            for opt in args.optimizers:
                out.append({"name": f"bn-{bn_label}_lr{lr:g}_{opt}", "bn": bn_label, "lr": lr,
                            "optimizer": opt, "batchnorm": placement})
    return out


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without --overwrite (changes nothing)."""
    if out.exists() and not out.is_dir():
        raise errors.SvhnJaxError(f"--out {out} is a file, not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise errors.SvhnJaxError(f"--out {out} already exists and is not empty; pass "
                                  f"--overwrite to replace the grid in it, or choose another path")


def prepare_out(out: Path, names: list[str], overwrite: bool) -> None:
    """check_out, then create --out; with --overwrite, clear the grid's own run folders."""
    check_out(out, overwrite)
    if out.is_dir() and overwrite:
        for name in names:
            run = out / name
            if run.is_dir() and (any((run / f).exists() for f in RUN_FILES) or not any(run.iterdir())):
                shutil.rmtree(run)  # stale files (an old best.npz) must not outlive a rerun
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise errors.SvhnJaxError(f"cannot create --out {out} ({e.strerror}); choose a writable folder")


def read_history(run: Path) -> list[dict]:
    """history.csv of a run folder as a list of dicts with float values ([] if absent)."""
    path = run / "history.csv"
    if not path.exists() or not path.read_text().strip():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(x):
    """A finite float, or None (JSON null / empty CSV cell)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def result_row(g: dict, metrics: dict, history: list[dict], seconds: float, status: str) -> dict:
    last = history[-1] if history else {}
    has_epochs = bool(history) and metrics.get("best_val_acc", -1) >= 0
    return {"rank": None, "name": g["name"], "bn": g["bn"], "lr": g["lr"], "optimizer": g["optimizer"],
            "best_val_acc": _num(metrics.get("best_val_acc")) if has_epochs else None,
            "best_epoch": int(metrics["best_epoch"]) if has_epochs else None,
            "final_train_loss": _num(last.get("train_loss")), "final_val_loss": _num(last.get("val_loss")),
            "test_acc": _num(metrics.get("test_acc")), "seconds": round(seconds, 2), "status": status,
            "selected": False,
            "epochs_run": len(history), "diverged_at_step": metrics.get("diverged_at_step"),
            "run_dir": None}


def sort_rows(rows: list[dict]) -> list[dict]:
    """Completed runs by best validation accuracy (ties: lower final val loss), then the
    diverged ones the same way; the top completed run is marked `selected`."""
    def key(r):
        acc = r["best_val_acc"]
        loss = r["final_val_loss"]
        return (r["status"] != "completed", acc is None, -(acc or 0.0),
                math.inf if loss is None else loss)

    rows = sorted(rows, key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
        r["selected"] = False
    if rows and rows[0]["status"] == "completed" and rows[0]["best_val_acc"] is not None:
        rows[0]["selected"] = True
    return rows


HEADER_NOTE = ("sorted by best validation accuracy, diverged configurations last. Select a configuration by best_val_acc "
               "(validation); test_acc is each run's single test evaluation with its "
               "best-validation parameters, for reference only. * = best validation accuracy.")


def format_table(rows: list[dict]) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    def flt(x):
        return "-" if x is None else f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3e}"

    head = ("", "rank", "bn", "lr", "optimizer", "best val acc", "best ep", "final train loss",
            "final val loss", "test acc", "seconds", "status")
    body = [("*" if r["selected"] else "", str(r["rank"]), r["bn"], f"{r['lr']:g}", r["optimizer"],
             pct(r["best_val_acc"]), "-" if r["best_epoch"] is None else str(r["best_epoch"]),
             flt(r["final_train_loss"]), flt(r["final_val_loss"]), pct(r["test_acc"]),
             f"{r['seconds']:.1f}", r["status"]) for r in rows]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    left = {2, 4, 11}  # text columns
    fmt = lambda line: "  ".join(c.ljust(w) if i in left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def write_results(out: Path, rows: list[dict], settings: dict, wall: float) -> None:
    from svhn_jax import checkpoint

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    checkpoint.atomic_write_text(out / "results.csv", buf.getvalue())
    selected = next((r["name"] for r in rows if r["selected"]), None)
    doc = {"note": HEADER_NOTE, "selected_by_val": selected, "settings": settings,
           "wall_seconds": round(wall, 2), "columns": list(COLUMNS), "results": rows}
    checkpoint.atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n")


# ------------------------------------------------------------------ figures


def _save_png(fig, path: Path) -> Path:
    """Render a Figure to PNG bytes and write them atomically."""
    from svhn_jax import checkpoint

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    checkpoint.atomic_write_bytes(path, buf.getvalue())
    return path


def curves_grid(runs: list[dict], path: Path, kind: str) -> Path:
    """Train and val `kind` ('loss' or 'acc') per epoch, one panel per configuration.

    runs: [{"label", "history", "status"}]. The best validation epoch is starred;
    a diverged configuration says so in its panel title (its curve stops at the
    last completed epoch). Accuracy panels share one y-axis so they compare at a glance.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = max(len(runs), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows + 0.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=(kind == "acc"))
    scale = 100.0 if kind == "acc" else 1.0
    for ax in axes.ravel()[len(runs):]:
        ax.set_axis_off()
    for ax, run in zip(axes.ravel(), runs):
        hist = run["history"]
        ep = np.array([h["epoch"] for h in hist], dtype=float)
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            y = np.array([h[f"{split}_{kind}"] for h in hist], dtype=float) * scale
            ax.plot(ep, y, "o-", ms=3, color=color, label=split)
        title = run["label"]
        if hist:
            va = np.array([h["val_acc"] for h in hist], dtype=float)
            i = int(np.nanargmax(va)) if np.isfinite(va).any() else None
            if i is not None:
                yv = hist[i][f"val_{kind}"] * scale
                ax.plot([ep[i]], [yv], "*", color="tab:orange", ms=12, mec="k", zorder=5)
                title += f"\nbest val {100 * va[i]:.1f}% (epoch {int(ep[i])})"
        if run["status"] != "completed":
            title += f"\n{run['status'].upper()}"
        if not hist:
            ax.text(0.5, 0.5, "no completed epoch", ha="center", va="center",
                    transform=ax.transAxes, color="tab:red")
        ax.set_title(title, fontsize="small",
                     color="tab:red" if run["status"] != "completed" else "black")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="small")
    epochs = [h["epoch"] for run in runs for h in run["history"]] or [1.0]
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes.ravel():  # shared x: one locator and one range serve every panel
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if max(epochs) - min(epochs) < 2:  # a lone epoch: give it neighbours, or ticks read 0.98
        axes[0, 0].set_xlim(min(epochs) - 1, max(epochs) + 1)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)" if kind == "acc" else "cross-entropy loss")
    axes[0, 0].legend(fontsize="small")
    fig.suptitle(f"train and val {'accuracy' if kind == 'acc' else 'loss'} per configuration "
                 f"(* = best val accuracy)")
    return _save_png(fig, path)


# ------------------------------------------------------------------ main


def run_grid(args) -> int:
    from svhn_jax import data

    out = Path(args.out)
    configs = grid(args)
    # --out and data first, before JAX is imported: a mistake is reported at once and
    # leaves nothing behind (each run loads the data again; an .npz loads in a blink).
    check_out(out, args.overwrite)
    data.ensure_available(args.data, args.data_dir, download=False)
    if args.data != "synthetic":
        data.load(args.data, data_dir=args.data_dir)

    from svhn_jax import plots, runs

    settings = {"data": args.data, "epochs": args.epochs, "hidden": args.hidden, "batch": args.batch,
                "seed": args.seed, "grayscale": args.grayscale, "preprocess": args.preprocess,
                "bn_placement": args.bn_placement, "schedule": "constant", "reg": 0.0,
                "grid": {"bn": list(GRID_BN), "lr": args.lrs, "optimizer": args.optimizers}}
    made = [runs.make_config(None, data=args.data, data_dir=args.data_dir, hidden=args.hidden,
                             batchnorm=c["batchnorm"], optimizer=c["optimizer"], lr=c["lr"],
                             batch=args.batch, epochs=args.epochs, seed=args.seed,
                             grayscale=args.grayscale, preprocess=args.preprocess,
                             schedule="constant", reg=0.0)
            for c in configs]
    prepare_out(out, [c["name"] for c in configs], args.overwrite)

    rows, curves = [], []
    t_grid = time.perf_counter()
    print(f"seed grid: {len(configs)} configurations x {args.epochs} epochs into {out} "
          f"(preprocess {args.preprocess}, {'grayscale' if args.grayscale else 'RGB'})", flush=True)
    interrupted = None
    for i, (g, config) in enumerate(zip(configs, made), 1):
        run_dir = out / g["name"]
        t0 = time.perf_counter()
        try:
            metrics = runs.train_run(config, run_dir, overwrite=args.overwrite, quiet=args.quiet)
            status = "completed"
        except runs.Diverged as e:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            status = "diverged"
            print(f"  {g['name']}: {e}", file=sys.stderr)
        except runs.Interrupted as e:
            interrupted = e
            break
        seconds = time.perf_counter() - t0
        history = read_history(run_dir)
        row = result_row(g, metrics, history, seconds, status)
        row["run_dir"] = str(run_dir)
        rows.append(row)
        curves.append({"label": g["name"], "history": history, "status": status})
        acc = "-" if row["best_val_acc"] is None else f"{100 * row['best_val_acc']:.2f}%"
        test = "" if row["test_acc"] is None else f", test {100 * row['test_acc']:.2f}%"
        print(f"[{i}/{len(configs)}] {g['name']}: {status}, best val {acc} "
              f"(epoch {row['best_epoch']}){test}, {seconds:.1f}s", flush=True)

    wall = time.perf_counter() - t_grid
    rows = sort_rows(rows)
    write_results(out, rows, settings, wall)
    outputs = [out / "results.csv", out / "results.json"]
    if curves:
        outputs.append(curves_grid(curves, out / "loss_curves.png", "loss"))
        outputs.append(curves_grid(curves, out / "accuracy_curves.png", "acc"))
        outputs.append(plots.overlay_curves(curves, out / "val_overlay.png"))
    if interrupted is not None:
        print(f"grid interrupted after {len(rows)} configurations; their results are in {out}",
              file=sys.stderr)
        raise interrupted

    print()
    print(f"results ({HEADER_NOTE})")
    print(format_table(rows))
    n_div = sum(r["status"] == "diverged" for r in rows)
    print(f"\n{len(rows)} configurations in {wall:.1f}s wall"
          + (f" ({n_div} diverged)" if n_div else ""))
    print(f"run folders: {out}/<name>  (svhn-jax evaluate --run {out}/<name>)")
    for p in outputs:
        print(f"wrote {p}")
    return errors.EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_grid(args)
    except errors.SvhnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

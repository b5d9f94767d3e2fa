"""The `svhn-jax` command: one subcommand per job.

Every user mistake surfaces as an `errors.SvhnJaxError`; `main` prints its
message and exits with its documented code, so no bad input ends in a
traceback. Subcommands import their modules lazily, which keeps `--help`
and early errors fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from . import errors
from .flags import add_settings, given_settings, int_list, make_config, number


# ------------------------------------------------------------------ gradcheck


def cmd_gradcheck(args) -> int:
    from .nn import gradcheck, model

    if args.batch < 2:
        raise errors.SvhnJaxError("--batch must be at least 2 (BatchNorm needs two rows for a variance)")
    if args.in_dim < 1 or args.fd_samples < 0:
        raise errors.SvhnJaxError("--in-dim must be at least 1 and --fd-samples at least 0 (0: all entries)")
    if args.fd_samples == 0:
        args.fd_samples = None

    # The model check uses the real input width; finite differences sample
    # entries of the big first layer instead of perturbing all 393k of them.
    reports = gradcheck.check_layers(batch=args.batch, seed=args.seed)
    placements = [("before", True), ("before", False), ("after", True)] if args.batchnorm \
        else [("none", True)]
    for bn, train in placements:
        reports.append(gradcheck.check_model(model.make_spec(args.hidden, batchnorm=bn),
                                             in_dim=args.in_dim, batch=args.batch, reg=args.reg,
                                             seed=args.seed, train=train, fd_samples=args.fd_samples))
    ok = all(r["ok"] for r in reports)
    summary = {
        "ok": ok,
        "tolerances": {"manual_vs_autodiff": gradcheck.TOL_AUTODIFF,
                       "manual_vs_finite_diff": gradcheck.TOL_FINITE_DIFF},
        "max_rel_error_manual_vs_autodiff": max(r["max_rel_error_manual_vs_autodiff"] for r in reports),
        "max_rel_error_manual_vs_finite_diff": max(r["max_rel_error_manual_vs_finite_diff"] for r in reports),
        "max_rel_error_autodiff_vs_finite_diff": max(r["max_rel_error_autodiff_vs_finite_diff"] for r in reports),
        "checks": reports,
        "leaves": [dict(leaf, check=r["check"]) for r in reports for leaf in r["leaves"]],
        "failures": [f"{r['check']}: {f}" for r in reports for f in r["failures"]],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(gradcheck.format_table(reports))
        print(f"\nmax rel error  hand vs jax.grad: {summary['max_rel_error_manual_vs_autodiff']:.1e} "
              f"(tolerance {gradcheck.TOL_AUTODIFF:.0e})   hand vs finite differences: "
              f"{summary['max_rel_error_manual_vs_finite_diff']:.1e} "
              f"(tolerance {gradcheck.TOL_FINITE_DIFF:.0e})")
        print("PASS" if ok else "FAIL:\n  " + "\n  ".join(summary["failures"]))
    return errors.EXIT_OK if ok else errors.EXIT_CHECK_FAILED


def add_gradcheck(sub):
    p = sub.add_parser("gradcheck", help="hand VJPs vs jax.grad vs finite differences (float64)",
                       description="Check every layer, the loss and the whole model in float64: "
                                   "hand-written backward vs jax.grad vs central finite differences. "
                                   "Exits 1 when a tolerance is exceeded.")
    p.add_argument("--hidden", type=int_list, default=(128,), help="hidden sizes, e.g. 128 or 512,256")
    p.add_argument("--batchnorm", action="store_true", help="also check BatchNorm models (before and after ReLU)")
    p.add_argument("--batch", type=int, default=8, help="batch size (>= 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reg", type=float, default=0.1, help="L2 strength in the model check")
    p.add_argument("--in-dim", type=int, default=3072, help="input width of the model check")
    p.add_argument("--fd-samples", type=int, default=20,
                   help="finite-difference entries per parameter leaf (0: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_gradcheck)


# ---------------------------------------------------------------- train / evaluate


def _summary_line(metrics: dict) -> str:
    line = f"best validation accuracy {metrics['best_val_acc']:.2%} (epoch {metrics['best_epoch']})"
    if metrics.get("test_acc") is not None:
        line += f"; test accuracy {metrics['test_acc']:.2%} on {metrics['n_test']} images"
    if "member_test_acc" in metrics:   # an ensemble: what its members score alone
        line += "\nmembers alone: " + "  ".join(f"{a:.2%}" for a in metrics["member_test_acc"])
    return line


def cmd_train(args) -> int:
    from . import atomic, data

    if args.resume:
        given = sorted(given_settings(args, "train")) + [f for f in ("out", "preset", "config", "profile")
                                                         if getattr(args, f)]
        if given:
            raise errors.SvhnJaxError(
                f"--resume continues a run with its own settings; drop "
                f"{', '.join('--' + g.replace('_', '-') for g in given)} (to change them, start a "
                f"new run: --config {args.resume}/config.json --out NEW_RUN plus the changes)")
        out = Path(args.resume)
    else:
        if not args.out:
            raise errors.SvhnJaxError("say where the run goes: --out RUN_DIR")
        c, out = make_config(args, "train"), Path(args.out)
        if not args.download:
            # Before importing JAX: a missing dataset is reported in a fraction of a second.
            data.ensure_available(c.data, c.data_dir, download=False)
    from . import runs

    try:
        # With --json, stdout carries the JSON object alone (tensorflow-datasets prints
        # while preparing), so everything else goes to stderr.
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            if args.resume:
                metrics = runs.resume_run(out, quiet=args.quiet)
            else:
                metrics = runs.train_run(c, out, overwrite=args.overwrite, download=args.download,
                                         quiet=args.quiet, profile=args.profile)
    except (runs.Diverged, runs.Interrupted):
        if args.json and (out / "metrics.json").exists():
            print((out / "metrics.json").read_text().strip())
        raise
    print(atomic.strict_json(metrics, indent=None) if args.json
          else f"{_summary_line(metrics)}\nrun folder: {out}")
    return errors.EXIT_OK


def add_train(sub):
    p = sub.add_parser("train", help="train on SVHN (or an .npz / synthetic data) into a run folder",
                       description="Train the MLP, check gradients as asked, evaluate once on test "
                                   "with the best-validation parameters, write a run folder.")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--config", metavar="FILE", help="settings from a JSON file, e.g. another run's "
                   "config.json; flags given with it override it")
    p.add_argument("--download", action="store_true",
                   help="fetch and prepare the official SVHN files if they are missing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder's files")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print metrics as one JSON object")
    p.add_argument("--profile", metavar="DIR", help="trace 5 steps after compilation with "
                   "jax.profiler into DIR (TensorBoard's profile tab, or Perfetto)")
    add_settings(p, "train")
    p.set_defaults(func=cmd_train)


def cmd_evaluate(args) -> int:
    from . import atomic, evaluate

    r = evaluate.evaluate_run(args.run, args.data, split=args.split, data_dir=args.data_dir)
    if r["overlap_with_training"]:
        print(f"warning: {r['overlap_with_training']} of the {r['n']} scored images are images the "
              f"run trained on, so this is not a held-out score (--split test scores the run's "
              f"held-out part)", file=sys.stderr)
    if args.json:
        print(atomic.strict_json(r, indent=None))
    else:
        overlap = r["overlap_with_training"]
        print(f"accuracy {r['accuracy']:.2%}  loss {r['loss']:.4f}  on {r['n']} images "
              f"({r['data']}, split {r['split']}; "
              f"{'overlap with training unknown' if overlap is None else f'{overlap} seen in training'})")
        print("per class: " + "  ".join(f"{k}:{a:.0%}" for k, a in enumerate(r["per_class_accuracy"])))
        if "member_accuracy" in r:   # an ensemble: what its members score alone
            print("members alone: " + "  ".join(f"{a:.2%}" for a in r["member_accuracy"]))
    return errors.EXIT_OK


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a run's best parameters on data")
    p.add_argument("--run", required=True, help="a run folder written by svhn-jax train")
    p.add_argument("--data", help="data to evaluate on (default: the run's own)")
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="part to score (default: the run's held-out test part on its own data, "
                        "else the data's official test split, else all of it); all scores every "
                        "image, trained-on ones included")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------ download / prepare


def cmd_download(args) -> int:
    from . import data

    splits = ("train", "test", "extra") if args.extra else ("train", "test")
    paths = data.download(args.dir, splits, timeout=args.timeout, progress=sys.stderr.isatty())
    for split, path in paths.items():
        print(f"{split}: {path}")
    return errors.EXIT_OK


def add_download(sub):
    p = sub.add_parser("download", help="fetch the official SVHN .mat files (checksums verified)")
    p.add_argument("--dir", default="svhn_mat", help="folder for the .mat files (default ./svhn_mat)")
    p.add_argument("--extra", action="store_true", help="also the 1.3 GB extra split")
    p.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds")
    p.set_defaults(func=cmd_download)


def cmd_prepare(args) -> int:
    from . import data

    splits = ("train", "test", "extra") if args.extra else ("train", "test")
    out = data.prepare(args.mat_dir, args.data_dir, splits=splits, verify=not args.no_verify)
    print(f"prepared svhn_cropped in {out}")
    return errors.EXIT_OK


def add_prepare(sub):
    p = sub.add_parser("prepare", help="build the tensorflow-datasets svhn_cropped dataset from .mat files")
    p.add_argument("--mat-dir", required=True, help="folder holding train_32x32.mat and test_32x32.mat")
    p.add_argument("--data-dir", help="tensorflow-datasets folder (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--extra", action="store_true", help="also prepare extra_32x32.mat")
    p.add_argument("--no-verify", action="store_true", help="skip checksums (only for custom files)")
    p.set_defaults(func=cmd_prepare)


# ------------------------------------------------------------- sweep / lr-find


def cmd_sweep(args) -> int:
    from . import atomic, config, tune

    axes = {a: tune.parse_values(a, getattr(args, a)) for a in config.SWEEPABLE
            if getattr(args, a, None) is not None}
    fixed = {a: v[0] for a, v in axes.items() if isinstance(v, list) and len(v) == 1}
    axes = {a: v for a, v in axes.items() if a not in fixed}
    single = {k: v for k, v in given_settings(args, "sweep").items() if k not in config.SWEEPABLE}
    base = config.make(args.preset, **single, **fixed)
    axes = axes or {"lr": [base.lr]}
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        summary = tune.sweep(base, axes, args.out, search=args.search, trials=args.trials,
                             search_seed=args.search_seed, final=not args.no_final,
                             final_on=args.final_on, overwrite=args.overwrite, quiet=args.json)
    if args.json:
        print(atomic.strict_json(summary, indent=None))
        return errors.EXIT_OK
    print(tune.format_table(summary["results"]))
    print(f"\n{summary['configurations']} configurations in {summary['groups']} compiled group(s), "
          f"{summary['sweep_seconds']:.1f} s; chosen on validation: "
          + ", ".join(f"{k}={v}" for k, v in sorted(summary["best"].items())))
    if "final" in summary:
        f = summary["final"]
        print(f"final run {summary['final_run']}: test accuracy {f.get('test_acc', float('nan')):.2%} "
              f"on {f['n_test']} images (test touched once)")
    print(f"results: {args.out}/results.csv, results.json, plots in {args.out}")
    return errors.EXIT_OK


def add_sweep(sub):
    p = sub.add_parser("sweep", help="many configurations on validation (vmapped), one final test",
                       description="Every sweepable setting takes a comma-separated list or, for "
                                   "numbers, a range LO:HI:log|lin:N. Configurations differing only "
                                   "in lr, reg and seed are trained at once in one compiled, vmapped "
                                   "program.")
    p.add_argument("--out", required=True, help="sweep folder to create")
    p.add_argument("--overwrite", action="store_true")
    add_settings(p, "sweep", lists=True)
    p.add_argument("--search", choices=("grid", "random"), default="grid")
    p.add_argument("--trials", type=number(int), default=10, help="configurations drawn by random search")
    p.add_argument("--search-seed", type=number(int), default=0)
    p.add_argument("--final-on", choices=("train", "train+val"), default="train",
                   help="retrain the chosen configuration on train, or on train+val")
    p.add_argument("--no-final", action="store_true", help="skip the final retraining and test evaluation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)


def cmd_lr_find(args) -> int:
    from . import atomic, lrfind

    c = make_config(args, "lr-find")
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        r = lrfind.lr_find(c, args.out, lr_min=args.lr_min, lr_max=args.lr_max, steps=args.steps,
                           overwrite=args.overwrite)
    if args.json:
        print(atomic.strict_json(r, indent=None))
    else:
        print(f"suggested learning rate {r['suggested_lr']:.2e} (smoothed loss is lowest at "
              f"{r['lr_at_min_loss']:.2e}); plot: {args.out}/lr_find.png")
    return errors.EXIT_OK


def add_lr_find(sub):
    p = sub.add_parser("lr-find", help="learning-rate range test: loss against an exponentially rising lr")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    add_settings(p, "lr-find")
    p.add_argument("--lr-min", type=number(float), default=1e-7)
    p.add_argument("--lr-max", type=number(float), default=10.0)
    p.add_argument("--steps", type=number(int), default=300)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lr_find)


# ----------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    from . import bench

    modes = bench.parse_modes(args.modes)  # before JAX starts: a typo fails fast
    bench.check_args(args.hidden, args.batch, args.epochs, args.n, args.eager_steps)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        report = bench.run(args.hidden, args.batch, args.epochs, args.n, modes, args.seed,
                           eager_steps=args.eager_steps, progress=progress)
    print(json.dumps(report) if args.json else bench.format_report(report))
    return errors.EXIT_OK


def add_bench(sub):
    p = sub.add_parser("bench", help="seconds per epoch: scan vs jitted step vs eager vs NumPy vs PyTorch",
                       description="Time training epochs of the same MLP (Adam, synthetic SVHN-shaped "
                                   "data) in each mode, back to back in one process, with the machine's "
                                   "peak GFLOP/s and the CPU load of other processes. Timings drift "
                                   "between runs: compare the ratios.")
    p.add_argument("--hidden", type=int_list, default=(128,), help="hidden sizes to try, e.g. 128 or 128,512")
    p.add_argument("--batch", type=int_list, default=(64, 512), help="batch sizes to try (default 64,512)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per mode, after a warm-up (median)")
    p.add_argument("--n", type=int, default=73257, help="synthetic images per epoch (default: SVHN train)")
    p.add_argument("--modes", default=",".join(MODES_FOR_HELP),
                   help="comma-separated subset of " + ", ".join(MODES_FOR_HELP))
    p.add_argument("--eager-steps", type=int, default=20,
                   help="timed steps per block in eager mode (its epoch is extrapolated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)


MODES_FOR_HELP = ("scan_manual", "scan_autodiff", "jit_manual", "jit_autodiff", "eager", "numpy",
                  "torch_eager")  # = bench.MODES; building the parser imports nothing heavy


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svhn-jax",
        description="A from-scratch JAX MLP for SVHN with hand-derived, checked backward passes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train, add_evaluate, add_sweep, add_lr_find, add_gradcheck, add_download, add_prepare, add_bench):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except errors.SvhnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # outside training's own handler: nothing to save yet
        print("interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The `svhn-jax` command: one subcommand per job.

Every user mistake surfaces as an `errors.SvhnJaxError`; `main` prints its
message and exits with its documented code, so no bad input ends in a
traceback. Subcommands import their modules lazily, which keeps `--help`
and early errors fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from . import cli_tools, errors
from . import __version__
from . import config
from .flags import Parser, Refused, add_settings, given_settings, make_config, number, process_settings


# ---------------------------------------------------------------- train / evaluate


@contextlib.contextmanager
def _stdout_to_stderr(active: bool):
    """Send everything written to stdout, by Python or by C++ libraries, to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _summary_line(metrics: dict) -> str:
    line = f"best validation accuracy {metrics['best_val_acc']:.2%} (epoch {metrics['best_epoch']})"
    if metrics.get("test_acc") is not None:
        line += f"; test accuracy {metrics['test_acc']:.2%} on {metrics['n_test']} images"
    if "member_test_acc" in metrics:   # an ensemble: what its members score alone
        line += "\nmembers alone: " + "  ".join(f"{a:.2%}" for a in metrics["member_test_acc"])
    if metrics.get("gradchecks"):
        line += "\n" + _gradcheck_line(metrics)
    return line


def _gradcheck_line(m: dict) -> str:
    """The per-step gradient checks of a run in one line, from its metrics.json."""
    err = lambda key: "none" if m.get(key) is None else f"{m[key]:.1e}"
    return (f"{m['gradchecks']:,} gradient checks, {m['gradchecks_failed']:,} failed, "
            f"{m['gradchecks_nonsmooth']:,} set aside (not smooth); largest errors: hand vs jax.grad "
            f"{err('gradcheck_max_manual_vs_autodiff')}, along a random direction vs jax.jvp "
            f"{err('gradcheck_max_directional_jvp')} and vs the finite difference "
            f"{err('gradcheck_max_directional_fd')} (tolerance {m['gradcheck_tolerance']:.1e})")


def cmd_train(args) -> int:
    from . import atomic, data

    if args.resume:
        given = sorted(set(given_settings(args, "train")) - {"devices"}) + [
            f for f in ("out", "preset", "config", "profile") if getattr(args, f)]
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
        if not args.download and not _several(args):
            # Before importing JAX: a missing dataset is reported in a fraction of a second.
            # (Several processes report it together, once they have joined.)
            data.ensure_available(c.data, c.data_dir, download=False, extra=c.extra)
    from .run import launch as runs

    _join(args)
    try:
        # With --json, stdout carries the JSON object alone (tensorflow-datasets prints
        # while preparing, Gloo from C++ when processes connect): the rest goes to stderr.
        with _stdout_to_stderr(args.json):
            if args.resume:
                metrics = runs.resume_run(out, quiet=args.quiet, devices=args.devices)
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
    _add_processes(p)
    add_settings(p, "train")
    p.set_defaults(func=cmd_train)


def _add_processes(p):
    g = p.add_argument_group("several processes (or SVHN_JAX_COORDINATOR, SVHN_JAX_NUM_PROCESSES, "
                             "SVHN_JAX_PROCESS_ID); every process runs the same command")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", metavar="N", help="how many processes run this command")
    g.add_argument("--process-id", metavar="I", help="this process's number, 0 to N-1")
    g.add_argument("--process-timeout", metavar="S", type=number(float), default=60.0,
                   help="bound on every wait for another process, in seconds: joining, agreeing, "
                        "and the silence after which a process counts as lost (half of it)")


def _several(args) -> bool:
    return process_settings(args.coordinator, args.num_processes, args.process_id) is not None


def _join(args) -> None:
    from .run import processes

    processes.initialize(args.coordinator, args.num_processes, args.process_id,
                         timeout_s=args.process_timeout)


def cmd_evaluate(args) -> int:
    from . import atomic
    from .run import evaluate

    r = evaluate.evaluate_run(args.run, args.data, split=args.split, data_dir=args.data_dir,
                              tta=args.tta)
    if r["overlap_with_training"]:
        print(f"warning: {r['overlap_with_training']} of the {r['n']} scored images are images the "
              f"run trained on, so this is not a held-out score (--split test scores the run's "
              f"held-out part)", file=sys.stderr)
    if args.json:
        print(atomic.strict_json(r, indent=None))
    else:
        overlap = r["overlap_with_training"]
        copies = f"softmax averaged over {r['tta']} copies; " if r["tta"] > 1 else ""
        print(f"accuracy {r['accuracy']:.2%}  loss {r['loss']:.4f}  on {r['n']} images "
              f"({r['data']}, split {r['split']}; {copies}"
              f"{'overlap with training unknown' if overlap is None else f'{overlap} seen in training'})")
        print("per class: " + "  ".join(f"{k}:{a:.0%}" for k, a in enumerate(r["per_class_accuracy"])))
        if "member_accuracy" in r:   # an ensemble: what its members score alone
            print("members alone: " + "  ".join(f"{a:.2%}" for a in r["member_accuracy"]))
    return errors.EXIT_OK


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a run's best parameters on data")
    p.add_argument("--run", required=True, help="a run folder written by svhn-jax train")
    p.add_argument("--data", help="data to evaluate on (default: the run's own)")
    p.add_argument("--data-dir", help="tensorflow-datasets folder of --data svhn (default: the run's)")
    p.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="part to score (default: the run's held-out test part on its own data, "
                        "else the data's official test split, else all of it); all scores every "
                        "image, trained-on ones included")
    p.add_argument("--tta", metavar="N", type=number(int),
                   help="average the softmax over N copies of each image: the image, then its "
                        "shifts by one pixel (default: the run's --tta, 1 unless set)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------- sweep / lr-find


def cmd_sweep(args) -> int:
    from . import atomic, config
    from .tune import sweep as tune

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in given_settings(args, "sweep")] + [
            f"--{f.replace('_', '-')}" for f in ("out", "preset", "overwrite", "no_final")
            if getattr(args, f)]
        if given:
            raise errors.SvhnJaxError(f"--resume continues a sweep with its own plan; drop "
                                      f"{', '.join(given)}")
        _join(args)
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            summary = tune.resume_sweep(args.resume, quiet=args.json)
        args.out = args.resume
    else:
        if not args.out:
            raise errors.SvhnJaxError("say where the sweep goes: --out SWEEP_DIR")
        axes = {a: tune.parse_values(a, getattr(args, a)) for a in config.SWEEPABLE
                if getattr(args, a, None) is not None}
        fixed = {a: v[0] for a, v in axes.items() if isinstance(v, list) and len(v) == 1}
        axes = {a: v for a, v in axes.items() if a not in fixed}
        single = {k: v for k, v in given_settings(args, "sweep").items() if k not in config.SWEEPABLE}
        base = config.make(args.preset, **single, **fixed)
        axes = axes or {"lr": [base.lr]}
        _join(args)
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


# The add_* functions below are argparse declarations: alike in shape to cli_tools'
# (duplicates lists them), with nothing shared to factor out.
def add_sweep(sub):
    p = sub.add_parser("sweep", help="many configurations on validation (vmapped), one final test",
                       description="Every sweepable setting takes a comma-separated list or, for "
                                   "numbers, a range LO:HI:log|lin:N. Configurations differing only "
                                   "in lr, reg and seed are trained at once in one compiled, vmapped "
                                   "program. Settings not given come from --preset, else from the "
                                   "plain defaults (constant learning rate, no L2, no shifts).")
    p.add_argument("--out", help="sweep folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder's files")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep: finished "
                   "groups are kept, an interrupted one continues from its checkpoint")
    _add_processes(p)
    add_settings(p, "sweep", lists=True)
    p.add_argument("--search", choices=("grid", "random"), default="grid",
                   help="every combination of the values, or --trials random draws")
    p.add_argument("--trials", type=number(int), default=10, help="configurations drawn by random search")
    p.add_argument("--search-seed", type=number(int), default=0, help="seed of the random search")
    p.add_argument("--final-on", choices=("train", "train+val"), default="train",
                   help="retrain the chosen configuration on train, or on train+val")
    p.add_argument("--no-final", action="store_true", help="skip the final retraining and test evaluation")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_sweep)


def cmd_lr_find(args) -> int:
    from . import atomic
    from .tune import lrfind

    c = make_config(args, "lr-find")
    _join(args)
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
    p.add_argument("--out", required=True, help="folder for lr_find.csv, .json and .png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder's files")
    p.add_argument("--resume", action=Refused, reason=config.NO_CHECKPOINTS)
    _add_processes(p)
    add_settings(p, "lr-find")
    p.add_argument("--lr-min", type=number(float), default=1e-7, help="learning rate of the first step")
    p.add_argument("--lr-max", type=number(float), default=10.0, help="learning rate of the last step")
    p.add_argument("--steps", type=number(int), default=300, help="steps, the learning rate rising "
                   "exponentially from --lr-min to --lr-max (it stops early when the loss explodes)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_lr_find)


# ----------------------------------------------------------------------- main


def build_parser() -> Parser:
    parser = Parser(
        prog="svhn-jax",
        description="A from-scratch JAX MLP for SVHN with hand-derived, checked backward passes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train, add_evaluate, add_sweep, add_lr_find, cli_tools.add_gradcheck,
                cli_tools.add_download, cli_tools.add_prepare, cli_tools.add_bench):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return errors.run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())

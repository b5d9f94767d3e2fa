"""The `svhn-jax` command: one subcommand per job.

Every user mistake surfaces as an `errors.SvhnJaxError`; `main` prints its
message and exits with its documented code, so no bad input ends in a
traceback. Subcommands import their modules lazily, which keeps `--help`
and early errors fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import errors


def int_list(text: str) -> tuple[int, ...]:
    """'128' or '512,256' -> (128,) or (512, 256)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,256, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return values


# ------------------------------------------------------------------ gradcheck


def cmd_gradcheck(args) -> int:
    from . import gradcheck, model

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


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svhn-jax",
        description="A from-scratch JAX MLP for SVHN with hand-derived, checked backward passes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_gradcheck(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch", 2) < 2 and args.command == "gradcheck":
        print("error: --batch must be at least 2 (BatchNorm needs two rows for a variance)",
              file=sys.stderr)
        return errors.EXIT_USAGE
    if getattr(args, "fd_samples", None) == 0:
        args.fd_samples = None
    try:
        return args.func(args)
    except errors.SvhnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

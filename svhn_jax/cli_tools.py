"""The `svhn-jax` commands that are not runs: gradcheck, bench, download, prepare.
Each imports its modules lazily, so --help and early errors stay fast."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys

from . import errors
from .flags import int_list


# ------------------------------------------------------------------ gradcheck


def cmd_gradcheck(args) -> int:
    from .nn import coverage, gradcheck, layers

    if args.batch < 2:
        raise errors.SvhnJaxError("--batch must be at least 2 (BatchNorm needs two rows for a variance)")
    if args.in_dim < 1 or args.fd_samples < 0:
        raise errors.SvhnJaxError("--in-dim must be at least 1 and --fd-samples at least 0 (0: all entries)")
    if args.fd_samples == 0:
        args.fd_samples = None
    if args.batchnorm and args.placement:
        raise errors.SvhnJaxError("--batchnorm means --placement before,after: give one of them")
    placements = ("before", "after") if args.batchnorm else args.placement or ("none", "before", "after")
    activations = args.activation or layers.activations()
    unknown = [a for a in activations if a not in layers.activations()]
    if unknown:
        raise errors.SvhnJaxError(f"unknown activation {', '.join(unknown)}; choose from "
                                  f"{','.join(layers.activations())}")
    # a rate flag is named after its layer (--dropout, --input-dropout)
    rates = {n: getattr(args, n) for n, layer in layers.LAYERS.items() if layer.rate and getattr(args, n, 0)}
    if any(not 0 <= r < 1 for r in rates.values()):
        raise errors.SvhnJaxError("a dropout rate must be at least 0 and below 1, e.g. --dropout 0.3")
    if args.devices is not None:  # settle the mesh before the slow checks
        from .nn import distcheck
        from .step import mesh as meshes

        place = meshes.data_placement(args.devices)
        meshes.check_batch(args.batch, place)
        mesh = place.mesh

    # The model check uses the real input width; finite differences sample
    # entries of the big first layer instead of perturbing all 393k of them.
    settings = dict(placements=placements, modes=args.mode, activations=activations, rates=rates,
                    batch=args.batch, in_dim=args.in_dim, reg=args.reg, seed=args.seed,
                    fd_samples=args.fd_samples)
    tolerances = {"manual_vs_autodiff": gradcheck.TOL_AUTODIFF,
                  "manual_vs_finite_diff": gradcheck.TOL_FINITE_DIFF}
    try:
        reports = coverage.check_all(args.hidden, **settings)
        if args.devices is not None:  # the same models again, the batch split over the mesh
            reports += distcheck.check_sharded_all(mesh, args.hidden, **settings)
            tolerances["sharded_manual_vs_autodiff"] = distcheck.TOL_AUTODIFF
    except gradcheck.GradCheckError as e:   # a gradient tree that cannot be compared at all
        print(f"FAIL: {e}", file=sys.stderr)
        return errors.EXIT_CHECK_FAILED
    ok = all(r["ok"] for r in reports)
    summary = {
        "ok": ok,
        "tolerances": tolerances,
        "variants": [r["check"] for r in reports],
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
        print(f"\n{len(reports)} variants checked:\n  " + "\n  ".join(
            f"{'ok    ' if r['ok'] else 'FAILED'} {r['check']}" for r in reports))
        print(f"\nmax rel error  hand vs jax.grad: {summary['max_rel_error_manual_vs_autodiff']:.1e} "
              f"(tolerance {gradcheck.TOL_AUTODIFF:.0e})   hand vs finite differences: "
              f"{summary['max_rel_error_manual_vs_finite_diff']:.1e} "
              f"(tolerance {gradcheck.TOL_FINITE_DIFF:.0e})")
        print("PASS" if ok else "FAIL:\n  " + "\n  ".join(summary["failures"]))
    return errors.EXIT_OK if ok else errors.EXIT_CHECK_FAILED


def _names(*allowed: str):
    """An argparse type: a comma-separated list of some of `allowed`."""
    def parse(value: str) -> tuple:
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{value!r}: choose from {','.join(allowed)}")
        return names
    return parse


def _layer_names(value: str) -> tuple:
    """An argparse type: a comma-separated list of names (the registry judges them later)."""
    names = tuple(v.strip() for v in value.split(","))
    if not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
        raise argparse.ArgumentTypeError(f"{value!r}: expected names like relu,tanh")
    return names


def add_gradcheck(sub):
    p = sub.add_parser("gradcheck", help="hand VJPs vs jax.grad vs finite differences (float64)",
                       description="Check, in float64, every layer variant of the models (Dense with "
                                   "and without bias, each activation, BatchNorm in train and eval mode, "
                                   "dropout with --dropout or --input-dropout), the loss, and the whole "
                                   "model with BatchNorm nowhere, before and after the activation (the "
                                   "first activation; each other activation of the layer registry "
                                   "without BatchNorm), in train and eval mode: "
                                   "hand-written backward vs jax.grad vs central finite differences. "
                                   "--activation, --placement (or --batchnorm) and --mode narrow the "
                                   "models (and the layer variants they contain). Exits 1 when a "
                                   "tolerance is exceeded.")
    p.add_argument("--hidden", type=int_list, default=(128,), help="hidden sizes, e.g. 128 or 512,256")
    p.add_argument("--placement", type=_names("none", "before", "after"), metavar="none,before,after",
                   help="only the models with these BatchNorm placements (default: all)")
    p.add_argument("--batchnorm", action="store_true",
                   help="only the models with BatchNorm: --placement before,after")
    p.add_argument("--mode", type=_names("train", "eval"), default=("train", "eval"), metavar="train,eval",
                   help="only these modes (default train,eval)")
    p.add_argument("--activation", type=_layer_names, metavar="A,B", help="only the models with these activations (default: every activation "
                                       "of the layer registry)")
    p.add_argument("--dropout", type=float, default=0.0, metavar="P",
                   help="models with dropout at rate P after every hidden block (default %(default)s: none)")
    p.add_argument("--input-dropout", type=float, default=0.0, metavar="P",
                   help="models with dropout at rate P on the input (default %(default)s: none)")
    p.add_argument("--batch", type=int, default=8, help="batch size (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parameters, inputs and directions")
    p.add_argument("--reg", type=float, default=0.1, help="L2 strength in the model check")
    p.add_argument("--in-dim", type=int, default=3072, help="input width of the model check")
    p.add_argument("--fd-samples", type=int, default=20,
                   help="finite-difference entries per parameter leaf (0: all)")
    p.add_argument("--devices", metavar="N|all",
                   help="also check the data-parallel models: the batch split over N devices "
                        "(on CPU: JAX_NUM_CPU_DEVICES=N), synchronised BatchNorm, hand psum")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_gradcheck)


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


# ----------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    from . import bench

    modes = bench.parse_modes(args.modes)  # before JAX starts: a typo fails fast
    bench.check_args(args.hidden, args.batch, args.epochs, args.n, args.eager_steps, args.gradcheck_every)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        report = bench.run(args.hidden, args.batch, args.epochs, args.n, modes, args.seed,
                           eager_steps=args.eager_steps, gradcheck_every=args.gradcheck_every,
                           devices=args.devices, progress=progress)
    print(json.dumps(report) if args.json else bench.format_report(report))
    if args.profile:
        session = bench.profile(args.hidden[0], args.batch[0], args.n, args.profile, args.seed)
        print(f"profile of 5 scan_manual steps (hidden {args.hidden[0]}, batch {args.batch[0]}): "
              f"{session} (tensorboard --logdir {args.profile}, or ui.perfetto.dev)", file=sys.stderr)
    return errors.EXIT_OK


def add_bench(sub):
    p = sub.add_parser("bench", help="seconds per epoch: scan vs jitted step vs eager vs NumPy vs PyTorch",
                       description="Time training epochs of the mission's MLP (synthetic SVHN-shaped "
                                   "images, normalised and shifted in the step as svhn-jax train does) "
                                   "in each mode, back to back in one process, against the floors the "
                                   "machine's measured matmul peak and memory bandwidth set, with the CPU "
                                   "load of other processes. Timings drift between runs: compare the "
                                   "ratios.")
    p.add_argument("--hidden", type=int_list, default=(128,), help="hidden sizes to try, e.g. 128 or 128,512")
    p.add_argument("--batch", type=int_list, default=(64, 512), help="batch sizes to try (default 64,512)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per mode, after a warm-up (median)")
    p.add_argument("--n", type=int, default=73257, help="synthetic images per epoch (default 73257, "
                   "the size of SVHN's training split)")
    p.add_argument("--modes", default=",".join(MODES_FOR_HELP),
                   help="comma-separated subset of " + ", ".join(MODES_FOR_HELP) + ", or none "
                   "(default: all of them)")
    p.add_argument("--gradcheck-every", type=int, default=0, metavar="N",
                   help="also time the mission's training (grayscale inputs, shift 2, Adam, cosine) "
                        "with the per-step gradient check every N steps against the same training "
                        "without it, alternately, and print the ratio (0: off; with --modes none, "
                        "only this)")
    p.add_argument("--devices", metavar="N,M,...|all",
                   help="also time the scan modes data-parallel on a mesh of each number of devices "
                        "(the global batch split over them; 1 is always measured, as the reference) "
                        "and print the per-device throughput and the scaling efficiency (t1/tD)/D; "
                        "on CPU set JAX_NUM_CPU_DEVICES=N first, and the figures then measure "
                        "overhead, not speed-up (forced devices share the cores)")
    p.add_argument("--eager-steps", type=int, default=20,
                   help="timed steps per block in eager mode (its epoch is extrapolated)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and the synthetic data")
    p.add_argument("--profile", metavar="DIR", help="then trace 5 steps of the first hidden size "
                   "and batch with jax.profiler into DIR (TensorBoard's profile tab, or Perfetto)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)


MODES_FOR_HELP = ("scan_manual", "scan_autodiff", "scan_features", "jit_manual", "jit_autodiff", "eager",
                  "numpy", "torch_eager")  # = bench.MODES; building the parser imports nothing heavy

"""Is the training step slower than at another revision? Time both side by side.

    python scripts/bench_compare.py REF [REF2] [--batch 64,512] [--rounds 4] [--epochs 5]
                                    [--n 60000] [--preset mission] [--json]

Checks out git revision REF in a temporary worktree (removed afterwards) and
times its training against the working tree's as it is now, uncommitted
changes included (or against REF2's, checked out the same way). Each
revision is driven through its own command line, `svhn-jax train --data
synthetic --synthetic-n N --preset P --epochs E --batch B`, in a subprocess
whose PYTHONPATH and working folder are that revision's tree: the command
line has been stable since release 0.2.0 while the Python API and the module
paths have not. The entry point is read from the tree's pyproject.toml, and
--quiet and --no-tensorboard are passed where the revision has them. No
network and nothing outside the repository is needed.

A round runs every batch size once on each side, the two sides back to back
and in alternating order (A B, then B A, ...), so slow phases of a shared
machine hit both alike. A run's time is the median of the per-epoch training
seconds in its history.csv, the first epoch (which compiles) left out. Per
batch size the report gives each side's median over the rounds and, per
round, the ratio t(B) / t(A) of the two runs of that round: their median,
their range and spread ((max - min) / median). A ratio above 1 means B (the
working tree, or REF2) is slower than A (REF). Ratios from one run compare;
absolute seconds drift on a shared machine, whose load from other processes
is reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svhn_jax.bench import machine  # noqa: E402
from svhn_jax.errors import SvhnJaxError  # noqa: E402

WORKING_TREE = "working tree"


# ------------------------------------------------------------------ arithmetic


def run_seconds(epoch_seconds: list[float]) -> float:
    """A run's time per epoch: the median of its epochs after the first (which compiles)."""
    if len(epoch_seconds) < 2:
        raise SvhnJaxError(f"a run needs at least 2 epochs to time one after compilation, "
                           f"got {len(epoch_seconds)}; use --epochs 2 or more")
    return statistics.median(epoch_seconds[1:])


def summarise(a: list[float], b: list[float]) -> dict:
    """Per-round times of sides A and B (same length) ->

    {"a_s", "b_s": median seconds per epoch over the rounds,
     "ratios": t_b / t_a of each round, "ratio": their median,
     "ratio_min", "ratio_max", "spread": (max - min) / median of the ratios}
    """
    if len(a) != len(b) or not a:
        raise SvhnJaxError("each side needs the same number of rounds, at least one")
    ratios = [tb / ta for ta, tb in zip(a, b)]
    mid = statistics.median(ratios)
    return {"a_s": statistics.median(a), "b_s": statistics.median(b), "ratios": ratios, "ratio": mid,
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "spread": (max(ratios) - min(ratios)) / mid}


# ------------------------------------------------------------------ revisions


def git(*args, cwd=ROOT) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise SvhnJaxError(f"git {' '.join(args)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def resolve(ref: str) -> str:
    """The full commit id of REF, or a clear error."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except SvhnJaxError:
        raise SvhnJaxError(f"{ref!r} is not a commit of this repository; give a commit id, tag or "
                           f"branch (git log --oneline lists them)") from None


def describe_working_tree() -> str:
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return f"{WORKING_TREE} (HEAD {git('rev-parse', '--short', 'HEAD')}{', uncommitted changes' if dirty else ''})"


def entry_point(tree: Path) -> tuple[str, str]:
    """(module, function) of the tree's `svhn-jax` command, from its pyproject.toml."""
    with open(tree / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["svhn-jax"]
    module, _, func = target.partition(":")
    return module, func


def command(tree: Path) -> list[str]:
    module, func = entry_point(tree)
    return [sys.executable, "-c",
            f"import sys; sys.argv[0] = 'svhn-jax'; from {module} import {func}; sys.exit({func}())"]


def env(tree: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")


def train_flags(tree: Path) -> set[str]:
    """The flags `svhn-jax train --help` of this tree lists."""
    r = subprocess.run(command(tree) + ["train", "--help"], cwd=tree, env=env(tree), capture_output=True,
                       text=True, timeout=300)
    if r.returncode:
        raise SvhnJaxError(f"svhn-jax train --help failed in {tree}: {r.stderr.strip()[-500:]}")
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", r.stdout))
    missing = {"--data", "--synthetic-n", "--preset", "--epochs", "--batch", "--out"} - flags
    if missing:
        raise SvhnJaxError(f"this revision's svhn-jax train lacks {', '.join(sorted(missing))}: "
                           f"it cannot be timed this way")
    return flags


class Side:
    """One revision: a tree to run and the flags its command line takes."""

    def __init__(self, label: str, tree: Path):
        self.label, self.tree = label, tree
        self.flags = train_flags(tree)

    def time(self, a, batch: int, out: Path) -> float:
        """One training run; its seconds per epoch (run_seconds)."""
        argv = ["train", "--data", "synthetic", "--synthetic-n", str(a.n), "--preset", a.preset,
                "--epochs", str(a.epochs), "--batch", str(batch), "--seed", "0", "--out", str(out)]
        argv += [f for f in ("--overwrite", "--quiet", "--no-tensorboard") if f in self.flags]
        r = subprocess.run(command(self.tree) + argv, cwd=self.tree, env=env(self.tree),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=3600)
        if r.returncode:
            raise SvhnJaxError(f"{self.label}: svhn-jax {' '.join(argv)} failed (exit {r.returncode}): "
                               f"{r.stderr.strip()[-500:]}")
        with open(out / "history.csv", newline="") as f:
            return run_seconds([float(row["seconds"]) for row in csv.DictReader(f)])


# ----------------------------------------------------------------------- run


def compare(a_side: Side, b_side: Side, args, scratch: Path, say=lambda m: None) -> dict:
    times = {b: ([], []) for b in args.batch}
    with machine.measure_load() as load:
        for r in range(args.rounds):
            for b in args.batch:
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for k in order:
                    side = (a_side, b_side)[k]
                    t = side.time(args, b, scratch / f"run{k}")
                    times[b][k].append(t)
                    say(f"round {r + 1}/{args.rounds} batch {b}: {side.label}: {t:.3f} s/epoch")
    return {"a": a_side.label, "b": b_side.label, "n": args.n, "preset": args.preset, "epochs": args.epochs,
            "rounds": args.rounds,
            "batches": {str(b): summarise(*times[b]) for b in args.batch},
            "other_busy_cores": load.get("other_busy_cores"), "busy": load.get("busy")}


def format_report(rep: dict) -> str:
    lines = [f"A = {rep['a']}", f"B = {rep['b']}",
             f"svhn-jax train --data synthetic --synthetic-n {rep['n']} --preset {rep['preset']} "
             f"--epochs {rep['epochs']} --batch B; {rep['rounds']} rounds, A and B interleaved; "
             f"s/epoch: median over the epochs after the first, then over the rounds",
             f"{'batch':>5s} {'A s/epoch':>9s} {'B s/epoch':>9s} {'B/A median':>10s} {'min':>6s} {'max':>6s} "
             f"{'spread':>6s}  per-round B/A"]
    for b, s in rep["batches"].items():
        lines.append(f"{b:>5s} {s['a_s']:9.3f} {s['b_s']:9.3f} {s['ratio']:10.3f} {s['ratio_min']:6.3f} "
                     f"{s['ratio_max']:6.3f} {100 * s['spread']:5.1f}%  "
                     + " ".join(f"{x:.3f}" for x in s["ratios"]))
    lines.append("B/A > 1: B is slower than A.")
    if rep["other_busy_cores"] is not None:
        lines.append(f"other processes kept {rep['other_busy_cores']:.2f} cores busy on average"
                     + (" (BUSY: absolute times are off; the interleaved ratios less so)" if rep["busy"] else ""))
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 64,512, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ref", help="the revision to compare against (A)")
    ap.add_argument("ref2", nargs="?", help="a second revision (B; default: the working tree)")
    ap.add_argument("--batch", type=int_list, default=[64, 512])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5, help="per run; the first is not timed")
    ap.add_argument("--n", type=int, default=60000, help="synthetic images (70%% of them train)")
    ap.add_argument("--preset", default="mission")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        if args.rounds < 1:
            raise SvhnJaxError(f"--rounds must be at least 1, got {args.rounds}")
        if args.epochs < 2:
            raise SvhnJaxError(f"--epochs must be at least 2 (the first compiles and is not timed), "
                               f"got {args.epochs}")
        refs = [resolve(args.ref)] + ([resolve(args.ref2)] if args.ref2 else [])
        with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
            tmp = Path(tmp)
            trees = []
            try:
                for i, ref in enumerate(refs):
                    tree = tmp / f"tree{i}"
                    git("worktree", "add", "--detach", "--quiet", str(tree), ref)
                    trees.append(tree)
                labels = [git("log", "-1", "--format=%h %s", ref)[:80] for ref in refs]
                sides = [Side(label, tree) for label, tree in zip(labels, trees)]
                if len(sides) == 1:
                    sides.append(Side(describe_working_tree(), ROOT))
                rep = compare(*sides, args, tmp, say)
            finally:
                for tree in trees:
                    git("worktree", "remove", "--force", str(tree))
    except SvhnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep) if args.json else format_report(rep))
    return 0


if __name__ == "__main__":
    # a terminated comparison still removes its worktrees (SystemExit runs main's finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())

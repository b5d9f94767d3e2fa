"""Mutation testing of svhn_jax/nn/: does the suite fail when the maths is changed?

    python scripts/mutate.py                       # sample mode: 12 random mutants, at most 15 minutes
    python scripts/mutate.py --sample 150 --seed 1 --budget 0 --out mutation.json
    python scripts/mutate.py --list                # every mutant, with its id

Each mutant is one small change to one module of svhn_jax/nn/, found by walking
its syntax tree (docstrings, error messages, annotations and f-strings are left
alone):

  operator     + <-> -, * <-> /, ** -> *, // -> /, & <-> |, << <-> >>, and <-> or
  dropped      a + b, a - b, a * b, a / b -> a, or -> b; -x -> x; not x -> x
  comparison   < <-> <=, > <-> >=, == <-> !=, in <-> not in, is <-> is not
  constant     0 -> 1, 1 -> 0, n -> n + 1, x -> 2x (floats), True <-> False
  axis         the same on an axis (an `axis=` argument or the axis of a reduction)

Each is run in a scratch copy of the tree (never in the working files: a crash
cannot leave a mutant behind) against the test files that cover its module
(`TESTS`), fastest first, stopping at the first failure: a failing test (or a
timeout, or a mutant that no longer imports) kills it; all passing means it
survived (so the suite must pass without mutants: run it first, or pass
--baseline, which runs the sampled modules' tests once unmutated and stops if
one fails). Mutants listed in scripts/mutants_equivalent.txt (by id, with the
reason they cannot change behaviour) are reported as equivalent and not run.
The score is killed / (sampled - equivalent). Compilations are cached on disk
between mutants (JAX's persistent cache, keyed by the program: a mutated
program never hits another's entry).

Exit 0 when every sampled non-equivalent mutant was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import hashlib
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "svhn_jax/nn"
EQUIVALENT = ROOT / "scripts" / "mutants_equivalent.txt"
EIGHT_DEVICES = {"JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
PARALLEL = (("tests/test_parallel_devices.py",), EIGHT_DEVICES,
            "synchronised or shard_map or sharded or psum or averaged or local_batchnorm or catches")

# module -> the test runs that cover it, fastest first: (test files, extra
# environment, -k expression or None). A run is one pytest process.
TESTS = {
    "layers.py": [(("tests/test_layers.py", "tests/test_model.py"), {}, None),
                  (("tests/test_gradcheck.py", "tests/test_stepcheck.py"), {}, None), PARALLEL],
    "losses.py": [(("tests/test_layers.py", "tests/test_model.py", "tests/test_gradcheck.py"), {}, None)],
    "model.py": [(("tests/test_model.py", "tests/test_layers.py", "tests/test_gradcheck.py",
                   "tests/test_stepcheck.py", "tests/test_train.py"), {}, None), PARALLEL],
    "optim.py": [(("tests/test_optim.py",), {}, None)],
    "schedules.py": [(("tests/test_optim.py", "tests/test_config.py"), {}, None)],
    "treecheck.py": [(("tests/test_error_measures.py", "tests/test_gradcheck.py"), {}, None)],
    "finitediff.py": [(("tests/test_error_measures.py", "tests/test_gradcheck.py", "tests/test_layers.py"),
                       {}, None)],
    "gradcheck.py": [(("tests/test_error_measures.py", "tests/test_gradcheck.py", "tests/test_layers.py",
                       "tests/test_cli_gradcheck.py", "tests/test_gradcheck_sweep.py"), {}, None)],
    "coverage.py": [(("tests/test_cli_gradcheck.py", "tests/test_gradcheck_sweep.py"), {}, None)],
    "precision.py": [(("tests/test_stepcheck.py",), {}, "tolerance"),
                     (("tests/test_stepcheck.py", "tests/test_stepcheck_precision.py"), {}, None)],
    "stepcheck.py": [(("tests/test_stepcheck.py",), {}, "not injected and not sweeps and not bit_identical"),
                     (("tests/test_stepcheck.py", "tests/test_gradcheck.py", "tests/test_stepcheck_precision.py",
                       "tests/test_train.py", "tests/test_scripts.py"), {}, None), PARALLEL],
    "distcheck.py": [(("tests/test_error_measures.py",), {}, None),
                     PARALLEL[:2] + ("sharded or psum or averaged or local_batchnorm or cli_gradcheck",)],
}

SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
        ast.FloorDiv: ast.Div, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift,
        ast.RShift: ast.LShift}
DROPPABLE = (ast.Add, ast.Sub, ast.Mult, ast.Div)
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
REDUCTIONS = {"sum", "mean", "max", "min", "var", "std", "argmax", "all", "any", "concatenate", "stack"}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//",
          ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>", ast.Lt: "<", ast.LtE: "<=",
          ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in",
          ast.Is: "is", ast.IsNot: "is not", ast.And: "and", ast.Or: "or"}


# ---------------------------------------------------------------- finding mutants


def _skipped(tree) -> set[int]:
    """ids of nodes whose subtrees are left alone: docstrings, raise statements,
    f-strings, annotations, __all__, cache sizes."""
    skip = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.append(node)
        elif isinstance(node, (ast.Raise, ast.JoinedStr)):
            skip.append(node)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            skip.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            skip.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            skip.append(node.annotation)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            skip.append(node)
        elif isinstance(node, ast.keyword) and node.arg == "maxsize":
            skip.append(node)
    return {id(n) for s in skip for n in ast.walk(s)}


def _is_axis(parents, node) -> bool:
    parent = parents.get(id(node))
    if isinstance(parent, ast.keyword) and parent.arg in ("axis", "axes"):
        return True
    return (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute)
            and parent.func.attr in REDUCTIONS and node in parent.args)


def _variants(node, parents):
    """(kind, description, mutated node) for one node."""
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP:
        if any(isinstance(o, (ast.JoinedStr,)) or (isinstance(o, ast.Constant) and isinstance(o.value, str))
               for o in (node.left, node.right)):
            return
        new = copy.deepcopy(node)
        new.op = SWAP[type(node.op)]()
        yield "operator", f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[type(new.op)]}`", new
        if isinstance(node.op, DROPPABLE):
            yield "dropped", f"`a {SYMBOL[type(node.op)]} b` -> `a`", node.left
            yield "dropped", f"`a {SYMBOL[type(node.op)]} b` -> `b`", node.right
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
        yield "dropped", f"`{ {ast.USub: '-', ast.Not: 'not ', ast.Invert: '~'}[type(node.op)]}x` -> `x`", node.operand
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
        new = copy.deepcopy(node)
        new.ops = [COMPARE[type(node.ops[0])]()]
        yield "comparison", f"`{SYMBOL[type(node.ops[0])]}` -> `{SYMBOL[type(new.ops[0])]}`", new
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "operator", f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[type(new.op)]}`", new
    elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
        v = node.value
        new = (not v) if isinstance(v, bool) else {0: 1, 1: 0}.get(v, v + 1) if isinstance(v, int) \
            else (1.0 if v == 0 else 2 * v)
        kind = "axis" if _is_axis(parents, node) else "constant"
        yield kind, f"`{v!r}` -> `{new!r}`", ast.Constant(new)


def find_mutants(root: Path = ROOT) -> list[dict]:
    """Every mutant of every module of svhn_jax/nn/, in file order."""
    mutants = []
    for path in sorted((root / PACKAGE).glob("*.py")):
        if path.name == "__init__.py":
            continue
        source = path.read_text()
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line.encode()))
        tree = ast.parse(source)
        skip = _skipped(tree)
        parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        seen = {}
        raw = source.encode()
        for node in ast.walk(tree):
            if id(node) in skip or not hasattr(node, "lineno"):
                continue
            for kind, desc, new in _variants(node, parents):
                start = offsets[node.lineno - 1] + node.col_offset
                end = offsets[node.end_lineno - 1] + node.end_col_offset
                text = lines[node.lineno - 1].strip()
                key = (path.name, text, desc)
                seen[key] = seen.get(key, -1) + 1
                ident = hashlib.sha1(repr(key + (seen[key],)).encode()).hexdigest()[:10]
                mutants.append({"id": ident, "module": path.name, "line": node.lineno, "kind": kind,
                                "mutation": desc, "source": text, "start": start, "end": end,
                                "replacement": f"({ast.unparse(new)})",
                                "original": raw[start:end].decode()})
    mutants.sort(key=lambda m: (m["module"], m["start"], m["id"]))
    return mutants


def read_equivalent(path: Path = EQUIVALENT) -> dict:
    """{id: reason} from the equivalents file: `id  module:line  mutation  -- reason` per line."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                out[line.split()[0]] = line.split(" -- ", 1)[1].strip() if " -- " in line else ""
    return out


# -------------------------------------------------------------- running mutants


def _scratch(parent: Path) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="tree_", dir=parent))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".git", "runs", "sweeps")
    for name in ("svhn_jax", "tests", "scripts"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    return tree


def _pytest(run, tree: Path, cache: Path, timeout: float):
    """One test run (files, environment, -k expression) in the scratch tree."""
    files, env, select = run
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *files]
    cmd += ["-k", select] if select else []
    environ = dict(os.environ, PYTHONPATH=str(tree), JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", **env)
    r = subprocess.run(cmd, cwd=tree, env=environ, capture_output=True, text=True, timeout=max(timeout, 1))
    if r.returncode in (4, 5):   # usage error, nothing collected: the harness is wrong, not the mutant
        raise RuntimeError(f"pytest could not run {cmd}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def baseline(modules, tree: Path, cache: Path, timeout: float) -> None:
    """Every test run of these modules passes on the unmutated tree, or an error:
    a test that fails anyway would count every mutant as killed."""
    runs = {repr(r): r for m in sorted(modules) for r in TESTS[m]}
    for run in runs.values():
        r = _pytest(run, tree, cache, timeout)
        if r.returncode != 0:
            raise RuntimeError(f"the tests fail without any mutant ({' '.join(run[0])}):\n{r.stdout[-3000:]}")
        print(f"baseline: {' '.join(run[0])}{' -k ' + run[2] if run[2] else ''} passes", flush=True)


def run_mutant(m: dict, tree: Path, cache: Path, timeout: float, budget_left: float | None = None) -> dict:
    """Apply m in the scratch `tree`, run its module's tests, restore the file. A
    mutant still running when the budget ends is stopped and reported not run."""
    cut = budget_left is not None and budget_left < timeout
    timeout = budget_left if cut else timeout
    path = tree / PACKAGE / m["module"]
    original = path.read_bytes()
    assert original[m["start"]:m["end"]].decode() == m["original"], "the scratch copy is out of date"
    path.write_bytes(original[:m["start"]] + m["replacement"].encode() + original[m["end"]:])
    t0, status, by = time.perf_counter(), "survived", None
    try:
        for run in TESTS[m["module"]]:
            try:
                r = _pytest(run, tree, cache, timeout - (time.perf_counter() - t0))
            except subprocess.TimeoutExpired:
                status, by = ("not run", "budget spent") if cut else ("killed", f"timeout after {timeout:.0f}s")
                break
            if r.returncode != 0:
                failed = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
                status, by = "killed", failed[0] if failed else (r.stdout.strip().splitlines() or ["?"])[-1]
                break
    finally:
        path.write_bytes(original)
    return dict(m, status=status, killed_by=by, seconds=round(time.perf_counter() - t0, 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", type=int, default=12, help="random mutants to run (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--budget", type=float, default=900,
                   help="seconds the mutants may take in all: none starts after, a running one is stopped "
                        "and reported not run (0: no budget)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one mutant may take (then: killed)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own scratch copy")
    p.add_argument("--modules", help="comma-separated modules of svhn_jax/nn/ (default: all)")
    p.add_argument("--ids", help="comma-separated mutant ids to run (instead of a sample)")
    p.add_argument("--baseline", action="store_true",
                   help="first run the sampled modules' tests once on the unmutated tree, and stop if one "
                        "fails (without it, the suite is assumed green: run python -m pytest first)")
    p.add_argument("--out", help="write the report (JSON) here")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    mutants = find_mutants()
    if args.modules:
        wanted = {m if m.endswith(".py") else m + ".py" for m in args.modules.split(",")}
        mutants = [m for m in mutants if m["module"] in wanted]
    if args.list:
        for m in mutants:
            print(f"{m['id']}  {m['module']}:{m['line']}  {m['kind']:<10} {m['mutation']:<24} {m['source']}")
        print(f"{len(mutants)} mutants")
        return 0
    if args.ids:
        ids = set(args.ids.split(","))
        sample = [m for m in mutants if m["id"] in ids]
    elif args.sample and args.sample < len(mutants):
        sample = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m["module"], m["start"]))
    else:
        sample = mutants
    equivalent = read_equivalent()
    work = Path(tempfile.mkdtemp(prefix="svhn_jax_mutate_"))
    t0, trees, done = time.perf_counter(), queue.Queue(), [0]

    def one(m):
        if m["id"] in equivalent:
            r = dict(m, status="equivalent", killed_by=None, reason=equivalent[m["id"]], seconds=0.0)
        elif args.budget and time.perf_counter() - t0 > args.budget:
            r = dict(m, status="not run", killed_by="budget spent", seconds=0.0)
        else:
            tree = trees.get()
            try:
                left = args.budget - (time.perf_counter() - t0) if args.budget else None
                r = run_mutant(m, tree, work / "jax_cache", args.timeout, left)
            finally:
                trees.put(tree)
        done[0] += 1
        print(f"[{done[0]}/{len(sample)}] {r['status']:<10} {r['id']} {m['module']}:{m['line']} {m['mutation']}"
              f"  ({r['seconds']:.0f}s) {r.get('killed_by') or r.get('reason') or ''}", flush=True)
        return r

    try:
        for _ in range(args.jobs):   # one scratch copy per job
            trees.put(_scratch(work))
        if args.baseline:
            baseline({m["module"] for m in sample if m["id"] not in equivalent}, trees.queue[0], work / "jax_cache",
                     args.timeout)
            t0 = time.perf_counter()   # the budget is the mutants
        pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
        try:
            results = list(pool.map(one, sample))
        finally:   # Ctrl-C: the mutants not started are dropped, the scratch copies removed
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    count = lambda s: sum(r["status"] == s for r in results)
    judged = count("killed") + count("survived")
    summary = {"mutants": len(find_mutants()), "sampled": len(sample), "seed": args.seed,
               "killed": count("killed"), "survived": count("survived"), "equivalent": count("equivalent"),
               "not_run": count("not run"), "score": count("killed") / judged if judged else None,
               "seconds": round(time.perf_counter() - t0)}
    print(json.dumps(summary))
    for r in results:
        if r["status"] == "survived":
            print(f"SURVIVED {r['id']}  {r['module']}:{r['line']}  {r['mutation']}  in: {r['source']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    return 0 if not count("survived") else 1


if __name__ == "__main__":
    sys.exit(main())

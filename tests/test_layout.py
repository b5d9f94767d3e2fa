"""The package layout the README promises: `nn/` is pure maths that imports nothing else
of the package but the error types, no import cycles, small modules, and no test that
needs ../shared except through the skipping fixtures."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "svhn_jax"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every svhn_jax module `path` imports, at module level or inside a function."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("svhn_jax")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("svhn_jax"):
                base = node.module
            else:
                continue
            for a in node.names:   # `from . import x` imports a module; `from .m import f` imports m
                found.add(f"{base}.{a.name}" if _exists(f"{base}.{a.name}") else base)
    return found


def _exists(module: str) -> bool:
    p = ROOT.joinpath(*module.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    # importing a.b runs a/__init__.py first, but that edge is Python's, not ours
    return {m: {d for d in deps if d != m} for m, deps in graph.items()}


def test_the_import_graph_is_read_correctly():
    graph = _graph()
    assert "svhn_jax.nn.layers" in graph["svhn_jax.nn.model"]
    assert "svhn_jax.errors" in graph["svhn_jax.nn.layers"]
    assert "svhn_jax.run.launch" in graph["svhn_jax.cli"]           # a lazy import counts too


def test_nn_imports_nothing_of_the_package_but_the_error_types():
    graph = _graph()
    nn = {m for m in graph if m.startswith("svhn_jax.nn")}
    assert {"svhn_jax.nn.layers", "svhn_jax.nn.gradcheck", "svhn_jax.nn.optim"} <= nn
    for m in nn:
        outside = {d for d in graph[m] if not d.startswith("svhn_jax.nn") and d != "svhn_jax.errors"}
        assert not outside, f"{m} imports {sorted(outside)}"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d.startswith("svhn_jax") and d != "svhn_jax" and d in graph:
                if state.get(d) == 1:
                    raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
                if d not in state:
                    visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_module_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in list(PACKAGE.rglob("*.py")) + list((ROOT / "scripts").glob("*.py"))}
    assert len(sizes) > 20
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_the_real_slice_is_reached_only_through_the_skipping_fixtures():
    """A user's clone has no ../shared: a test that names the slice's path directly
    would fail there instead of skipping."""
    from svhn_jax.data import EIGHT_K_SLICE   # the one place the slice's path is written

    where = Path(EIGHT_K_SLICE)
    pattern = re.compile("|".join(map(re.escape, (where.stem, f"{where.parent.parent.name}/{where.parent.name}")))
                         + r"|\"shared\"|'shared'")
    tests = sorted((ROOT / "tests").glob("*.py"))
    assert any(pattern.search(p.read_text()) for p in tests if p.name == "conftest.py")
    offenders = [f"{p.name}:{i}" for p in tests if p.name not in ("conftest.py", Path(__file__).name)
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_the_suite_runs_with_full_precision_products():
    """conftest.py sets it for every backend (a GPU defaults to TF32): the float32
    tolerances of the suite assume it."""
    import jax

    assert str(jax.config.jax_default_matmul_precision).lower() == "highest"

"""The svhn_jax.data package stays light and self-contained: importing it (and its
preprocess module) imports neither tensorflow_datasets, scipy nor JAX; its modules form no
import cycle, import nothing of the package but the error types and atomic writes, and
none is over 400 lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("offline")   # no test here reaches the network


# ----------------------------------------------------------------- imports

def test_importing_data_imports_neither_tfds_scipy_nor_jax():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, svhn_jax.data; from svhn_jax.data import "
         "preprocess; print(*(m in sys.modules for m in "
         "('tensorflow_datasets', 'scipy.io', 'jax')))"],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr


def _package_imports() -> dict[str, set[str]]:
    """{module: modules it imports, at any depth of its code} for svhn_jax/data/*.py."""
    import ast

    graph = {}
    for path in sorted((ROOT / "svhn_jax" / "data").glob("*.py")):
        name = "svhn_jax.data" + ("" if path.stem == "__init__" else f".{path.stem}")
        package = "svhn_jax.data" if path.stem == "__init__" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                mod = ".".join(p for p in (base, node.module) if p)
                # `from . import x` imports the submodule x
                edges.update(f"{mod}.{a.name}" if node.module is None else mod
                             for a in node.names)
        graph[name] = edges
    return graph


def test_data_package_layout():
    """No import cycle, nothing of training imported, no module over 400 lines."""
    graph = _package_imports()
    assert "svhn_jax.data.tfds_builder" in graph and "svhn_jax.data.arrays" in graph
    inside = {m: {e for e in edges if e in graph} for m, edges in graph.items()}
    done: set[str] = set()

    def visit(m, stack):
        assert m not in stack, f"import cycle: {' -> '.join(stack + [m])}"
        if m not in done:
            for e in inside[m]:
                visit(e, stack + [m])
            done.add(m)

    for m in graph:
        visit(m, [])
    assert "svhn_jax.data.arrays" in inside["svhn_jax.data.tfds_builder"]
    outside = {e for edges in graph.values() for e in edges
               if e.startswith("svhn_jax") and e not in graph}
    assert outside == {"svhn_jax.errors", "svhn_jax.atomic"}, outside
    for path in (ROOT / "svhn_jax" / "data").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path

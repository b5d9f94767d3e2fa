"""Compare two pytrees' structures and leaf shapes before comparing their numbers.

`zip(jax.tree.leaves(a), jax.tree.leaves(b))` silently drops what one tree lacks and
lets NumPy broadcast a misshapen leaf; `tree_mismatch` names the difference first.
Shapes only, so it works on tracers inside `jax.jit` at no cost.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from jax.tree_util import keystr, tree_flatten_with_path, tree_structure


def path_namer(labels: tuple[str, ...]) -> Callable:
    """A function naming a leaf by its key path, the first key replaced by
    labels[first key]: labels ("0.dense", ...) turn path [0]['W'] into '0.dense.W'."""
    def name(path) -> str:
        if not path:
            return "<root>"
        head = getattr(path[0], "idx", None)
        first = labels[head] if head is not None and head < len(labels) else keystr(path[:1], simple=True)
        return ".".join(filter(None, [first, keystr(path[1:], simple=True, separator=".")]))
    return name


def tree_mismatch(tree, ref, *, what: str = "tree", ref_what: str = "reference",
                  name: Callable = keystr) -> str | None:
    """How `tree` differs from `ref`: leaves it lacks, leaves it has in excess,
    or leaves of another shape, each named by `name(key path)`; None if the
    structures and every leaf shape agree."""
    paths = {name(p): leaf for p, leaf in tree_flatten_with_path(tree)[0]}
    ref_paths = {name(p): leaf for p, leaf in tree_flatten_with_path(ref)[0]}
    problems = []
    missing = [n for n in ref_paths if n not in paths]
    extra = [n for n in paths if n not in ref_paths]
    if missing:
        problems.append(f"the {what} lacks {', '.join(missing)} (present in the {ref_what})")
    if extra:
        problems.append(f"the {what} has {', '.join(extra)} (absent from the {ref_what})")
    if not problems and tree_structure(tree) != tree_structure(ref):
        problems.append(f"the {what} is a {tree_structure(tree)}, the {ref_what} a {tree_structure(ref)}")
    for n, leaf in paths.items():
        if n in ref_paths and jnp.shape(leaf) != jnp.shape(ref_paths[n]):
            problems.append(f"{n} has shape {jnp.shape(leaf)} in the {what} but "
                            f"{jnp.shape(ref_paths[n])} in the {ref_what}")
    return "; ".join(problems) or None

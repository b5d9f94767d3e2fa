"""The gradient check run during training, inside the compiled step.

`check` runs in the same lax.scan as training (`train.StepConfig.check_every`),
on the batch and parameters of the update it precedes, and checks the float32
gradient g that update applies against three references:

  manual_vs_autodiff  every entry of the hand-derived gradient against jax.grad's,
      both float32 (one of them is g; the other costs a backward pass). Sees an
      error in any single entry above float32 rounding: a sign, a scale, a
      dropped term, one zeroed entry. Blind to errors below float32 rounding
      (`svhn-jax gradcheck` proves the hand backward in float64 to 1e-10).
  directional_jvp     <g, v> against jax.jvp of the loss along a random unit
      vector v over all parameters: forward mode, so no transposed rule and no
      hand code; exact (no truncation); float32, as nothing in it cancels; one
      extra matrix product. Sees the component of an error along v only.
  directional_fd      <g, v> against (L(p + eps v) - L(p - eps v)) / 2 eps in
      float64, where the difference of two nearly equal losses keeps its digits
      (float32 would keep none). The one reference that uses no derivative rule
      at all: it also sees a derivative wrong for the function as computed (a
      custom rule, a misplaced stop_gradient). It means something only where
      the loss is smooth along v between the two ends: `smooth` is false when
      a ReLU input changes sign in between (a kink) or the difference's
      rounding could reach a tenth of the tolerance. Such checks are recorded
      and set aside, neither passes nor failures.

None of them sees a wrong forward pass (a ReLU returning 1 for negative
inputs): each differentiates that same forward; tests pin forward values.

Directional errors are relative, with a floor so that a v nearly orthogonal
to g cannot inflate them: err(a, b) = |a - b| / (|a| + |b| + |g| / sqrt(P)),
P parameters; |g| / sqrt(P) is the root-mean-square of <g, v> over random v.

The tolerance of all three is 2^10 unit roundoffs u of the arithmetic that made
g (`tolerance`): u = 2^-24 for float32, so 6.1e-5; TensorFloat-32 products,
a GPU's default for float32, round inputs to u = 2^-11, and the check loosens
with them (set jax_default_matmul_precision=highest for a float32-tight one).
Float32 rounding through a few layers of sums stays within tens of u; the
bugs the tests inject differ by 1e-3 and more. README: the measured maxima.

Host side: `records` turns the scan's arrays into the rows of gradchecks.csv,
`passed` and `first_failure` judge them, `message` words a failure, `summary`
gives metrics.json's numbers (strict JSON: None where undefined).
`step_check` is the float64 recomputation (hand vs jax.grad and a directional
difference) outside the compiled step, for scripts/compare_grads.py.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path, tree_structure

from . import layers, losses, model
from .gradcheck import FD_STEP, TOL_FINITE_DIFF, GradCheckError, float64

F32_ROUNDOFF = 2.0 ** -24     # unit roundoff of float32
TF32_ROUNDOFF = 2.0 ** -11    # TensorFloat-32: float32 matrix products on recent GPUs, by default
BF16_ROUNDOFF = 2.0 ** -8     # bfloat16 passes: float32 matrix products on TPUs, by default
TOLERANCE_ROUNDOFFS = 2 ** 10


def matmul_roundoff(backend: str | None = None, precision: str | None = None) -> float:
    """Unit roundoff of float32 matrix products as JAX computes them on `backend`
    ('cpu', 'gpu', 'tpu'; default: the current one) under the
    jax_default_matmul_precision setting `precision` (default: the current one)."""
    backend = backend or jax.default_backend()
    precision = str(jax.config.jax_default_matmul_precision if precision is None else precision)
    if backend == "cpu" or precision.lower() in ("highest", "float32", "f32_f32_f32"):
        return F32_ROUNDOFF
    return BF16_ROUNDOFF if backend == "tpu" else TF32_ROUNDOFF


def tolerance(roundoff: float | None = None) -> float:
    """The largest error any of the three comparisons may show on correct code:
    TOLERANCE_ROUNDOFFS unit roundoffs of the arithmetic that made the gradient
    (default: `matmul_roundoff()`, 6.1e-5 for float32)."""
    return TOLERANCE_ROUNDOFFS * (matmul_roundoff() if roundoff is None else roundoff)


class StepCheck(NamedTuple):
    """One check, as scalars; from a scan, arrays (count,), or (K, count) for K
    configurations. On steps without a check `checked` is false and the other
    fields are zeros."""

    checked: Any              # bool
    step: Any                 # int32: updates done before the checked one
    manual_vs_autodiff: Any   # float32: per entry, the worst leaf
    directional_jvp: Any      # float32
    directional_fd: Any       # float32
    smooth: Any               # bool: directional_fd counts


def not_checked(step) -> StepCheck:
    """The record of a step without a check (the other branch of the scan's cond)."""
    zero = jnp.zeros((), jnp.float32)
    return StepCheck(jnp.bool_(False), step, zero, zero, zero, jnp.bool_(False))


# --------------------------------------------------------------- tree helpers


def _leaf_name(path, spec) -> str:
    """'2.dense.b' for the path of params[2]["b"], like gradcheck.leaf_names."""
    first = getattr(path[0], "idx", None) if path else None
    if first is not None and first < len(spec) and len(path) == 2 and hasattr(path[1], "key"):
        return f"{first}.{spec[first][0]}.{path[1].key}"
    return keystr(path)


def paired_leaves(a, b, spec=(), names=("gradient", "reference")):
    """[(name, leaf of a, leaf of b)] after checking that a and b have the same
    tree structure and leaf shapes; GradCheckError naming the first leaf that is
    missing, extra or misshapen. Runs at trace time: free under jit."""
    flat_a, flat_b = tree_flatten_with_path(a)[0], tree_flatten_with_path(b)[0]
    if tree_structure(a) != tree_structure(b):
        keys_a = {keystr(p): _leaf_name(p, spec) for p, _ in flat_a}
        keys_b = {keystr(p): _leaf_name(p, spec) for p, _ in flat_b}
        missing = [keys_b[k] for k in keys_b if k not in keys_a]
        extra = [keys_a[k] for k in keys_a if k not in keys_b]
        what = (f"lacks leaf {missing[0]}" if missing else f"has an extra leaf {extra[0]}"
                if extra else f"has structure {tree_structure(a)}, not {tree_structure(b)}")
        raise GradCheckError(f"the {names[0]} {what} of the {names[1]}")
    out = []
    for (path, x), (_, y) in zip(flat_a, flat_b):
        name = _leaf_name(path, spec)
        if jnp.shape(x) != jnp.shape(y):
            raise GradCheckError(f"leaf {name} has shape {jnp.shape(x)} in the {names[0]} "
                                 f"but {jnp.shape(y)} in the {names[1]}")
        out.append((name, x, y))
    return out


def tree_vdot(a, b, spec=(), names=("gradient", "direction")):
    """sum over leaves of <a_leaf, b_leaf>, after `paired_leaves`' checks."""
    pairs = paired_leaves(a, b, spec, names)
    # an elementwise product and a sum fuse into one pass; a vdot of two long
    # vectors takes XLA:CPU's slower dot path
    return sum((jnp.sum(x * y) for _, x, y in pairs), jnp.zeros((), jnp.result_type(*jax.tree.leaves(a))))


def leaf_rel_error(a, b):
    """max |a - b| / max(1e-8, max(|a| + |b|)) over one leaf (0 for an empty leaf),
    as gradcheck.rel_error, traceable."""
    if a.size == 0:
        return jnp.zeros((), a.dtype)
    # both maxima in one pass over the leaf
    zero = jnp.zeros((), a.dtype)
    diff, size = jax.lax.reduce((jnp.abs(a - b), jnp.abs(a) + jnp.abs(b)), (zero, zero),
                                lambda x, y: (jnp.maximum(x[0], y[0]), jnp.maximum(x[1], y[1])),
                                tuple(range(a.ndim)))
    return diff / jnp.maximum(1e-8, size)


def direction(key, params):
    """A random unit vector over all P parameters, shaped like `params`, float32:
    independent random signs divided by sqrt(P).

    Signs rather than normal deviates: one random 32-bit word gives 32 signs,
    where a normal deviate costs a word of its own plus a transform, and over
    a network's worth of parameters that difference is most of the check's
    cost. A sign vector is as good a direction here: every entry of an error
    in the gradient contributes to <error, v> with the same weight 1 / sqrt(P),
    so an error in a single entry is never hidden by a small component of v.
    """
    leaves, treedef = jax.tree.flatten(params)
    n = sum(leaf.size for leaf in leaves)
    words = jax.random.bits(key, (-(-n // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    signs = (2.0 * bits.reshape(-1)[:n].astype(jnp.float32) - 1.0) / jnp.float32(math.sqrt(n))
    offsets = [0]
    for leaf in leaves:
        offsets.append(offsets[-1] + leaf.size)
    return jax.tree.unflatten(treedef, [signs[a:b].reshape(jnp.shape(leaf)).astype(leaf.dtype)
                                        for a, b, leaf in zip(offsets, offsets[1:], leaves)])


# -------------------------------------------------------------- the check


def _ends(params, bn_state, x, y, v, spec, reg, eps):
    """(L(p + eps v), L(p - eps v)) (2,) float64, and whether every ReLU input kept
    its sign between the two ends (a kink inside the step breaks the difference).

    The first layer is linear in its weights: its output at p +- eps v is
    x W + b +- eps (x V + v_b). The products x W and x V, the costliest of the
    network, are taken in float32 (the training step's forward and the jvp
    compute the very same ones, and XLA computes them once); everything after
    them is float64. Their rounding moves the point and the direction by
    float32 rounding, which changes the difference quotient by as much,
    relatively; it is not amplified by 1 / 2 eps, because the two ends share
    x W exactly and differ by eps x V.
    """
    first = params[0]
    xw, xv = x @ first["W"], x @ v[0]["W"]
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        p64, v64, state64 = f64(params), f64(v), f64(bn_state)
        xw, xv = f64(xw), f64(xv)
        if "b" in first:
            xw, xv = xw + p64[0]["b"], xv + v64[0]["b"]

        def end(sign):
            p = jax.tree.map(lambda a, d: a + sign * eps * d, p64, v64)
            h, masks = xw + sign * eps * xv, []
            for (name, _), q, s in zip(spec[1:], p[1:], state64[1:]):
                h, _, cache = layers.LAYERS[name].forward(q, s, h, True)
                if name == "relu":
                    masks.append(cache)
            ce, _ = losses.softmax_cross_entropy(h, y)
            return ce + losses.l2_penalty(p, jnp.asarray(reg, jnp.float64)), masks

        (up, masks_up), (down, masks_down) = end(1.0), end(-1.0)
        same = [jnp.all(a == b) for a, b in zip(masks_up, masks_down)]
        return jnp.stack([up, down]), jnp.all(jnp.stack(same)) if same else jnp.bool_(True)


# A bound on the central difference's rounding, in float64 roundoffs of
# (|L(p + eps v)| + |L(p - eps v)|) / 2 eps: each loss is a float64 sum over the
# batch and the weights, good to a few roundoffs; 16 leaves a margin.
ROUNDING_ULPS = 16.0


def check(params, bn_state, x, y, grads, reg, key, spec, grad_mode: str, *,
          eps: float = FD_STEP, tol: float | None = None) -> StepCheck:
    """The per-step check of `grads`, the float32 gradient computed in
    `grad_mode` on (x (B, D), y (B,)) at `params`, with `bn_state` and L2
    strength `reg`; v is `direction(key, params)`. Traceable (jit, scan, vmap).
    Returns a StepCheck with step 0 (the caller knows the step).

    tol: the directional tolerance that the finite difference's rounding must
    stay well below for it to count (`smooth`); default `tolerance()`.
    """
    if spec[0][0] != "dense":
        raise GradCheckError(f"the per-step check needs a Dense first layer, got {spec[0][0]!r}")
    tol = tolerance() if tol is None else tol
    other = "autodiff" if grad_mode == "manual" else "manual"
    _, g_other, _, _ = model.GRAD_MODES[other](params, bn_state, x, y, spec, reg, train=True)
    hand, auto = (grads, g_other) if grad_mode == "manual" else (g_other, grads)
    pairs = paired_leaves(hand, auto, spec, ("hand gradient", "jax.grad gradient"))
    per_entry = jnp.max(jnp.stack([leaf_rel_error(h, a) for _, h, a in pairs]))
    v = direction(key, params)
    loss = lambda p: model.loss(p, bn_state, x, y, spec, reg, train=True)[0]
    _, d_jvp = jax.jvp(loss, (params,), (v,))
    ends, no_kink = _ends(params, bn_state, x, y, v, spec, reg, eps)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    # the floor needs no precision: float32
    floor = jnp.sqrt(tree_vdot(grads, grads, spec)) / math.sqrt(n_params)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        gv = tree_vdot(f64(grads), f64(v), spec)
        err = lambda a, b: jnp.abs(a - b) / (jnp.abs(a) + jnp.abs(b) + floor)
        fd = (ends[0] - ends[1]) / (2 * eps)
        rounding = ROUNDING_ULPS * jnp.finfo(jnp.float64).eps * jnp.sum(jnp.abs(ends)) / (2 * eps)
        smooth = no_kink & (rounding <= 0.1 * tol * (jnp.abs(gv) + jnp.abs(fd) + floor))
        # float32 out of the float64 scope: two digits of an error are all a
        # record needs, and the scan's outputs keep the program's types
        return StepCheck(jnp.bool_(True), jnp.zeros((), jnp.int32), per_entry,
                         err(gv, jnp.asarray(d_jvp, jnp.float64)).astype(jnp.float32),
                         err(gv, fd).astype(jnp.float32), smooth)


# ------------------------------------------------------------- host side


def records(checks: StepCheck, epoch: int, config: int | None = None) -> list[dict]:
    """The rows of gradchecks.csv for the checked steps of one segment.

    checks: the StepCheck that `train.run_steps` returns (arrays (count,)), or
    that of `train.run_steps_many` (arrays (K, count)) with `config` = k.
    epoch: the epoch number written in the rows (1-based, as in history.csv).
    Each row: step, epoch, directional_fd, manual_vs_autodiff, smooth,
    directional_jvp, passed (`passed` with the current backend's tolerance).
    """
    c = StepCheck(*(np.asarray(a if config is None else a[config]) for a in checks))
    rows = []
    for i in np.flatnonzero(c.checked):
        row = {"step": int(c.step[i]), "epoch": int(epoch),
               "directional_fd": float(c.directional_fd[i]),
               "manual_vs_autodiff": float(c.manual_vs_autodiff[i]),
               "smooth": bool(c.smooth[i]), "directional_jvp": float(c.directional_jvp[i])}
        row["passed"] = passed(row)
        rows.append(row)
    return rows


def _counts(record: dict) -> dict:
    """The errors of a row that count: directional_fd only where smooth. Rows
    written before directional_jvp existed (or by scripts) lack it."""
    keys = ("manual_vs_autodiff", "directional_jvp") + (("directional_fd",) if record.get("smooth", True) else ())
    return {k: record[k] for k in keys if k in record}


def passed(record: dict, tol: float | None = None) -> bool:
    """Every error that counts is <= tol (default `tolerance()`). `not (e <= tol)`:
    a NaN error (a NaN gradient) fails."""
    tol = tolerance() if tol is None else tol
    return all(e <= tol for e in _counts(record).values())


def first_failure(rows: list[dict], tol: float | None = None) -> dict | None:
    """The first row that did not pass, or None."""
    return next((r for r in rows if not passed(r, tol)), None)


def message(record: dict, tol: float | None = None) -> str:
    """One line that says what a failed check measured, for the console."""
    tol = tolerance() if tol is None else tol
    fd = f"{record['directional_fd']:.1e}" + ("" if record.get("smooth", True) else " (not smooth: set aside)")
    return (f"gradient check at step {record['step']} (epoch {record['epoch']}) failed: "
            f"hand vs jax.grad {record['manual_vs_autodiff']:.1e}; along a random direction, "
            f"vs jax.jvp {record.get('directional_jvp', math.nan):.1e} and vs the finite difference "
            f"{fd} (tolerance {tol:.1e} for each)")


def summary(rows: list[dict], tol: float | None = None) -> dict:
    """Counts and the worst errors over the checks that count, for metrics.json:
    strict JSON, so None where a maximum is undefined (no such check, or only
    non-finite errors; those are failures and are counted as such)."""
    tol = tolerance() if tol is None else tol
    failed = [r for r in rows if not passed(r, tol)]

    def worst(key):
        values = [c[key] for c in map(_counts, rows) if key in c and math.isfinite(c[key])]
        return max(values, default=None)

    return {"gradchecks": len(rows), "gradchecks_failed": len(failed),
            "gradchecks_nonsmooth": sum(not r.get("smooth", True) for r in rows),
            "gradcheck_first_failed_step": failed[0]["step"] if failed else None,
            "gradcheck_max_manual_vs_autodiff": worst("manual_vs_autodiff"),
            "gradcheck_max_directional_jvp": worst("directional_jvp"),
            "gradcheck_max_directional_fd": worst("directional_fd"),
            "gradcheck_tolerance": tol}


# ----------------------------------------------- float64 recomputation


# Tolerances of `step_check`. The directional derivative <g, v> along a random
# unit vector is about |g| / sqrt(P) (P = 131k parameters in the mission
# network), so the central difference's rounding, ~1e-16 L / eps, reaches
# about 1e-6 of it on rare steps. Only checks whose differences at eps and
# 2 eps agree within 1e-6 count, and 1e-5 leaves a 10x margin; a wrong
# backward scores 1e-4 to 1. Hand vs jax.grad are both exact in float64, so
# 1e-10 is rounding.
TOL_STEP_DIRECTIONAL = 1e-5
TOL_STEP_AUTODIFF = 1e-10


def _rel(a, b):
    return jnp.abs(a - b) / jnp.maximum(1e-8, jnp.abs(a) + jnp.abs(b))


@partial(jax.jit, static_argnames=("spec", "train"))
def _step_check(params, state, x, y, key, reg, eps, spec, train):
    f = lambda p: model.loss(p, state, x, y, spec, reg, train=train)[0]
    _, g_manual, _, _ = model.loss_and_grads_manual(params, state, x, y, spec, reg, train=train)
    _, g_auto, _, _ = model.loss_and_grads_autodiff(params, state, x, y, spec, reg, train=train)
    v = jax.tree.map(lambda d: d.astype(jnp.float64), direction(key, params))
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, v)
    fd = (f(shifted(1.0)) - f(shifted(-1.0))) / (2 * eps)
    fd2 = (f(shifted(2.0)) - f(shifted(-2.0))) / (4 * eps)
    pairs = paired_leaves(g_manual, g_auto, spec, ("hand gradient", "jax.grad gradient"))
    worst = jnp.max(jnp.stack([leaf_rel_error(m, a) for _, m, a in pairs]))
    return _rel(fd, tree_vdot(g_manual, v, spec)), _rel(fd, fd2), worst


def step_check(params, state, x, y, spec, reg, key, *, eps=FD_STEP, train=True,
               tol=TOL_FINITE_DIFF):
    """A float64 recomputation on the given (float32) batch and parameters, outside
    the compiled step (scripts/compare_grads.py): hand vs jax.grad, both float64,
    and a directional central difference along `direction(key, params)`.

    Returns
      directional_fd      rel error of (L(p + eps v) - L(p - eps v)) / 2 eps against
                          <hand gradient, v>
      manual_vs_autodiff  max rel error between hand and jax.grad gradients
      smooth              the same difference with step 2 eps agrees within `tol`:
                          a ReLU kink inside the step, or a directional derivative so
                          small that rounding dominates, breaks this; such a check
                          proves nothing either way and is not a failure.
    Costs six forward and two backward passes in float64, plus one compilation.
    """
    with float64():
        up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        d, smooth, m = _step_check(up(params), up(state), up(x), jnp.asarray(y), key,
                                   jnp.float64(reg), jnp.float64(eps), spec, train)
        return {"directional_fd": float(d), "manual_vs_autodiff": float(m),
                "smooth": bool(smooth <= tol)}

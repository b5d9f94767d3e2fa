"""The gradient check run during training, inside the compiled step.

`check` runs in the same lax.scan as training (`train.StepConfig.check_every`),
on the batch and parameters of the update it precedes (and, at each epoch's
end, on the eval-mode pass that `train.evaluate` runs, BatchNorm with its
running statistics: `train.check_eval`). It compares g, the gradient the
update applies recomputed at the check's own precision, with three references:

  manual_vs_autodiff  every entry of the hand-derived gradient against jax.grad's.
      Sees an error in any single entry above rounding: a sign, a scale, a
      dropped term, one zeroed entry. Blind to errors below float32 rounding
      (`svhn-jax gradcheck` proves the hand backward in float64 to 1e-10).
  directional_jvp     <g, v> against jax.jvp of the loss along a random unit
      vector v over all parameters: forward mode, so no transposed rule and no
      hand code; exact (no truncation). Sees the component of an error along v.
  directional_fd      <g, v> against (L(p + eps v) - L(p - eps v)) / 2 eps in
      float64, where the difference of two nearly equal losses keeps its digits
      (float32 would keep none). The one reference that uses no derivative rule
      at all: it also sees a derivative wrong for the function as computed (a
      custom rule, a misplaced stop_gradient). It means something only where
      the loss is smooth along v between the two ends: `smooth` is false when
      the input of a layer with kinks changes pattern in between (a ReLU input
      changes sign: layers.Layer.kinks) or the difference's
      rounding could reach a tenth of the tolerance (`difference_counts`).
      Such checks are recorded and set aside, neither passes nor failures.

None of them sees a wrong forward pass (a ReLU returning 1 for negative
inputs): each differentiates that same forward; tests pin forward values.

Directional errors are relative, with a floor so that a v nearly orthogonal
to g cannot inflate them: `directional_error(a, b, floor)` = |a - b| /
(|a| + |b| + floor), floor = |g| / sqrt(P) over P parameters, the
root-mean-square of <g, v> over random v.

Precision. The check computes at its own precision, whatever the training's:
float32 products (`CHECK_PRECISION`, jax_default_matmul_precision "highest").
Where training multiplies at less (a GPU's default TensorFloat-32, a TPU's
bfloat16 passes: `matmul_roundoff`), the check recomputes g on the same batch
and parameters at full precision; where training already multiplies at full
float32 (a CPU), g is the applied gradient itself and nothing is recomputed.
So the tolerance of all three comparisons is 2^10 unit roundoffs of float32,
6.1e-5, on every backend (`tolerance`): float32 rounding through a few layers
of sums stays within tens of u, and the bugs the tests inject differ by 1e-3
and more. How far the applied gradient is from the full-precision one is
recorded apart, as information (`training_precision_error`), next to its own
bound (`training_precision_bound`): not a verdict, since only the training's
arithmetic, never a bug, makes the two differ.

Host side: `records` turns the scan's arrays into the rows of gradchecks.csv,
`passed` and `first_failure` judge them, `message` words a failure, `summary`
gives metrics.json's numbers (strict JSON: None where undefined).
`step_check` is the same check run in float64 outside the compiled step, for
scripts/compare_grads.py.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import layers, losses, model
from .gradcheck import FD_STEP, GradCheckError, check_tree, float64, path_namer
from .precision import (CHECK_PRECISION, F32_ROUNDOFF, matmul_roundoff, tolerance, tolerances,
                        training_precision_bound)

class StepCheck(NamedTuple):
    """One check, as scalars; from a scan, arrays (count,), or (K, count) for K
    configurations. On steps without a check `checked` is false and the other
    fields are zeros."""

    checked: Any                   # bool
    step: Any                      # int32: updates done before the checked one
    manual_vs_autodiff: Any        # float32: per entry, the worst leaf
    directional_jvp: Any           # float32
    directional_fd: Any            # float32
    smooth: Any                    # bool: directional_fd counts
    training_precision_error: Any  # float32: applied gradient vs g, over the whole gradient
    training_precision_bound: Any  # float32


def not_checked(step) -> StepCheck:
    """The record of a step without a check (the other branch of the scan's cond)."""
    zero, no = jnp.zeros((), jnp.float32), jnp.bool_(False)
    return StepCheck(no, step, zero, zero, zero, no, zero, zero)


# ------------------------------------------------------------------ measures


def _namer(spec):
    return path_namer(tuple(f"{i}.{layer}" for i, (layer, _) in enumerate(spec)))


def paired_leaves(a, b, spec=(), names=("gradient", "reference")):
    """[(leaf of a, leaf of b)] after `gradcheck.check_tree`: a GradCheckError
    names a missing, extra or misshapen leaf. Runs at trace time: free under jit."""
    check_tree(a, b, what=names[0], ref_what=names[1], name=_namer(spec))
    return list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_vdot(a, b, spec=(), names=("gradient", "direction")):
    """sum over leaves of <a_leaf, b_leaf>, after `paired_leaves`' checks."""
    # an elementwise product and a sum fuse into one pass; a vdot of two long
    # vectors takes XLA:CPU's slower dot path
    return sum((jnp.sum(x * y) for x, y in paired_leaves(a, b, spec, names)),
               jnp.zeros((), jnp.result_type(*jax.tree.leaves(a))))


def _maxima(a, b):
    """(max |a - b|, max(|a| + |b|)) over one leaf, in one pass; zeros if empty."""
    zero = jnp.zeros((), a.dtype)
    if a.size == 0:
        return zero, zero
    return jax.lax.reduce((jnp.abs(a - b), jnp.abs(a) + jnp.abs(b)), (zero, zero),
                          lambda x, y: (jnp.maximum(x[0], y[0]), jnp.maximum(x[1], y[1])),
                          tuple(range(a.ndim)))


def leaf_rel_error(a, b):
    """max |a - b| / max(1e-8, max(|a| + |b|)) over one leaf (0 for an empty leaf),
    as gradcheck.rel_error, traceable."""
    diff, size = _maxima(a, b)
    return diff / jnp.maximum(1e-8, size)


def worst_leaf_error(a, b, spec=(), names=("hand gradient", "jax.grad gradient")):
    """The largest `leaf_rel_error` over the leaves of two gradients."""
    return jnp.max(jnp.stack([leaf_rel_error(x, y) for x, y in paired_leaves(a, b, spec, names)]))


def tree_rel_error(a, b, spec=(), names=("applied gradient", "full-precision gradient")):
    """max |a - b| / max(1e-8, max(|a| + |b|)) over all leaves at once: an error
    relative to the whole gradient's scale, which a leaf of small entries (a
    bias whose batch sum cancels) cannot inflate."""
    diffs, sizes = zip(*(_maxima(x, y) for x, y in paired_leaves(a, b, spec, names)))
    return jnp.max(jnp.stack(diffs)) / jnp.maximum(1e-8, jnp.max(jnp.stack(sizes)))


def directional_error(a, b, floor):
    """|a - b| / (|a| + |b| + floor): two directional derivatives compared."""
    return jnp.abs(a - b) / (jnp.abs(a) + jnp.abs(b) + floor)


# A bound on the central difference's rounding, in float64 ulps of
# (|L(p + eps v)| + |L(p - eps v)|) / 2 eps: each loss is a float64 sum over the
# batch and the weights, good to a few roundoffs; 16 leaves a margin.
ROUNDING_ULPS = 16.0


def difference_counts(ends, eps, gv, fd, floor, tol):
    """Whether a central difference with losses `ends` (2,) at step `eps` is
    precise enough to judge <g, v> = gv against it (fd): its rounding,
    ROUNDING_ULPS ulps of the losses over 2 eps, must stay within a tenth of
    the tolerance on the comparison's own scale |gv| + |fd| + floor."""
    rounding = ROUNDING_ULPS * jnp.finfo(jnp.float64).eps * jnp.sum(jnp.abs(ends)) / (2 * eps)
    return rounding <= 0.1 * tol * (jnp.abs(gv) + jnp.abs(fd) + floor)


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
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    return jax.tree.unflatten(treedef, [signs[a:b].reshape(jnp.shape(leaf)).astype(leaf.dtype)
                                        for a, b, leaf in zip(offsets, offsets[1:], leaves)])


# -------------------------------------------------------------- the check


def _ends(params, bn_state, x, y, v, spec, reg, eps, train=True, smoothing=None, key=None, rates=None):
    """(L(p + eps v), L(p - eps v)) (2,) float64, and whether the input of every
    layer with kinks (layers.Layer.kinks: ReLU) kept its pattern between the two
    ends (a kink inside the step breaks the difference).

    The first linear layer is linear in its weights: its output at p +- eps v is
    x W + b +- eps (x V + v_b), x the output of the parameter-free layers before
    it (input dropout). The products x W and x V, the costliest of the network,
    are taken in the inputs' precision (the training step's forward and the jvp
    compute the very same ones, and XLA computes them once); everything after
    them is float64. Their rounding moves the point and the direction by float32
    rounding, which changes the difference quotient by as much, relatively; it
    is not amplified by 1 / 2 eps: the two ends share x W and differ by eps x V.
    """
    first = model.first_linear(spec)
    for i in range(first):
        x = model.apply_layer(i, spec[i][0], params[i], bn_state[i], x, train=train, key=key, rates=rates)[0]
    w = params[first]
    xw, xv = x @ w["W"], x @ v[first]["W"]
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        p64, v64, state64 = f64(params), f64(v), f64(bn_state)
        rates64 = f64(rates) if rates else rates
        xw, xv = f64(xw), f64(xv)
        if "b" in w:
            xw, xv = xw + p64[first]["b"], xv + v64[first]["b"]

        def end(sign):
            p = jax.tree.map(lambda a, d: a + sign * eps * d, p64, v64)
            h, patterns = xw + sign * eps * xv, []
            for i in range(first + 1, len(spec)):
                kinks = layers.LAYERS[spec[i][0]].kinks
                if kinks is not None:
                    patterns.append(kinks(h))
                h = model.apply_layer(i, spec[i][0], p[i], state64[i], h, train=train, key=key,
                                      rates=rates64)[0]
            ce, _ = losses.softmax_cross_entropy(h, y, None if smoothing is None else f64(smoothing))
            return ce + losses.l2_penalty(p, jnp.asarray(reg, jnp.float64)), patterns

        (up, masks_up), (down, masks_down) = end(1.0), end(-1.0)
        same = [jnp.all(a == b) for a, b in zip(masks_up, masks_down)]
        return jnp.stack([up, down]), jnp.all(jnp.stack(same)) if same else jnp.bool_(True)


def check(params, bn_state, x, y, reg, key, spec, grad_mode: str, *, smoothing=None, grads=None,
          train: bool = True, noise_key=None,
          loss_and_grads=None, eps: float = FD_STEP, tol: float | None = None, **rates) -> StepCheck:
    """The check of the gradient that training computes in `grad_mode` on
    (x (B, D), y (B,)) at `params`, with `bn_state`, L2 strength `reg` and label
    smoothing `smoothing`, in train mode or (train=False) the eval mode of `train.evaluate`; v is
    `direction(key, params)`. Traceable (jit, scan, vmap). Returns a StepCheck
    with step 0 (the caller knows the step).

    grads: the gradient the update applies, if the caller has it (it is then
    g itself where training multiplies at full precision, and is compared with
    g where not); None: none is applied (eval mode).
    loss_and_grads: what training calls for `grad_mode` instead of
    model.GRAD_MODES[grad_mode] (`parallel` passes the hand backward sharded
    over a mesh), so that g is computed as training computes it.
    tol: the directional tolerance that the difference's rounding must stay
    well below for it to count (`difference_counts`); default `tolerance()`.
    noise_key, rates: the step's key and the rates of its layers with randomness
    (model.forward): every gradient, the jvp and both ends see the update's masks.
    """
    first = model.first_linear(spec)
    if first is None or jax.tree.leaves(params[:first]):   # _ends perturbs the first layer by hand
        raise GradCheckError(f"the per-step check needs a linear layer, after none with parameters: "
                             f"got {[n for n, _ in spec]}")
    tol = tolerance() if tol is None else tol
    modes = dict(model.GRAD_MODES, **({grad_mode: loss_and_grads} if loss_and_grads else {}))
    gradient = lambda mode: modes[mode](params, bn_state, x, y, spec, reg=reg, smoothing=smoothing,
                                        train=train, key=noise_key, **rates)[1]
    u_train = matmul_roundoff()
    reduced = u_train > F32_ROUNDOFF
    applied = gradient(grad_mode) if grads is None and reduced else grads
    full = jax.default_matmul_precision(CHECK_PRECISION) if reduced else contextlib.nullcontext()
    with full:
        g = gradient(grad_mode) if reduced or grads is None else grads
        g_other = gradient("autodiff" if grad_mode == "manual" else "manual")
        hand, auto = (g, g_other) if grad_mode == "manual" else (g_other, g)
        per_entry = worst_leaf_error(hand, auto, spec)
        v = direction(key, params)
        loss = lambda p: model.loss(p, bn_state, x, y, spec, reg, smoothing=smoothing, train=train,
                                    key=noise_key, **rates)[0]
        _, d_jvp = jax.jvp(loss, (params,), (v,))
        ends, no_kink = _ends(params, bn_state, x, y, v, spec, reg, eps, train, smoothing, noise_key, rates)
    # where nothing was recomputed, g is the applied gradient itself
    off = tree_rel_error(applied, g, spec) if reduced and applied is not None else jnp.zeros((), per_entry.dtype)
    bound = training_precision_bound(spec, x.shape[0], u_train)
    # the floor needs no precision: in the gradient's dtype
    floor = jnp.sqrt(tree_vdot(g, g, spec)) / math.sqrt(sum(p.size for p in jax.tree.leaves(params)))
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        gv, floor = tree_vdot(f64(g), f64(v), spec), jnp.asarray(floor, jnp.float64)
        fd = (ends[0] - ends[1]) / (2 * eps)
        smooth = no_kink & difference_counts(ends, eps, gv, fd, floor, tol)
        # float32 out of the float64 scope: two digits of an error are all a
        # record needs, and the scan's outputs keep the program's types
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        return StepCheck(jnp.bool_(True), jnp.zeros((), jnp.int32), f32(per_entry),
                         f32(directional_error(gv, jnp.asarray(d_jvp, jnp.float64), floor)),
                         f32(directional_error(gv, fd, floor)), smooth, f32(off), f32(bound))


# ------------------------------------------------------------- host side

COLUMNS = ("step", "epoch", "mode", "manual_vs_autodiff", "directional_jvp", "directional_fd",
           "training_precision_error", "training_precision_bound", "smooth", "passed")
COMPARISONS = ("manual_vs_autodiff", "directional_jvp", "directional_fd")


def records(checks: StepCheck, epoch: int, config: int | None = None, mode: str = "train") -> list[dict]:
    """The rows of gradchecks.csv (keys: COLUMNS) for the checked steps of one segment.

    checks: the StepCheck that `train.run_steps` returns (arrays (count,)), or
    that of `train.run_steps_many` (arrays (K, count)) with `config` = k, or
    one check of scalars (`train.check_eval`).
    epoch: the epoch number written in the rows (1-based, as in history.csv).
    mode: 'train' (the per-step check) or 'eval' (the epoch's eval-mode check).
    `passed` is judged with `tolerance()`.
    """
    c = StepCheck(*(np.atleast_1d(np.asarray(a if config is None else a[config])) for a in checks))
    rows = []
    for i in np.flatnonzero(c.checked):
        row = {"step": int(c.step[i]), "epoch": int(epoch), "mode": mode}
        row.update({k: float(getattr(c, k)[i]) for k in COLUMNS[3:8]}, smooth=bool(c.smooth[i]))
        row["passed"] = passed(row)
        rows.append(row)
    return rows


def _counts(record: dict) -> dict:
    """The errors of a row that count: directional_fd only where smooth. Rows
    written before directional_jvp existed (or by scripts) lack it."""
    keys = COMPARISONS if record.get("smooth", True) else COMPARISONS[:2]
    return {k: record[k] for k in keys if k in record}


def passed(record: dict, tol: float | dict | None = None) -> bool:
    """Every error that counts is <= its tolerance: tol (default `tolerance()`),
    or tol[key] per comparison (`tolerances`). `not (e <= tol)`: a NaN error
    (a NaN gradient) fails."""
    tol = tolerance() if tol is None else tol
    return all(e <= (tol[k] if isinstance(tol, dict) else tol) for k, e in _counts(record).items())


def first_failure(rows: list[dict], tol: float | None = None) -> dict | None:
    """The first row that did not pass, or None."""
    return next((r for r in rows if not passed(r, tol)), None)


def message(record: dict, tol: float | None = None) -> str:
    """One line that says what a failed check measured, for the console."""
    tol = tolerance() if tol is None else tol
    fd = f"{record['directional_fd']:.1e}" + ("" if record.get("smooth", True) else " (not smooth: set aside)")
    mode = " (eval mode)" if record.get("mode") == "eval" else ""
    return (f"gradient check{mode} at step {record['step']} (epoch {record['epoch']}) failed: "
            f"hand vs jax.grad {record['manual_vs_autodiff']:.1e}; along a random direction, "
            f"vs jax.jvp {record.get('directional_jvp', math.nan):.1e} and vs the finite difference "
            f"{fd} (tolerance {tol:.1e} for each)")


def summary(rows: list[dict], tol: float | None = None) -> dict:
    """Counts and the worst errors over the checks that count, for metrics.json:
    strict JSON, so None where a maximum is undefined (no such check, or only
    non-finite errors; those are failures and are counted as such). The
    training precision's error is information: its maximum, its bound and how
    many checks exceeded the bound."""
    tol = tolerance() if tol is None else tol
    failed = [r for r in rows if not passed(r, tol)]

    def worst(key, of=_counts):
        values = [c[key] for c in map(of, rows) if key in c and math.isfinite(c[key])]
        return max(values, default=None)

    over = [r for r in rows if not r.get("training_precision_error", 0.0) <= r.get("training_precision_bound", 0.0)]
    return {"gradchecks": len(rows), "gradchecks_failed": len(failed),
            "gradchecks_eval": sum(r.get("mode") == "eval" for r in rows),
            "gradchecks_nonsmooth": sum(not r.get("smooth", True) for r in rows),
            "gradcheck_first_failed_step": failed[0]["step"] if failed else None,
            "gradcheck_max_manual_vs_autodiff": worst("manual_vs_autodiff"),
            "gradcheck_max_directional_jvp": worst("directional_jvp"),
            "gradcheck_max_directional_fd": worst("directional_fd"),
            "gradcheck_tolerance": tol,
            "gradcheck_max_training_precision_error": worst("training_precision_error", lambda r: r),
            "gradcheck_training_precision_bound": worst("training_precision_bound", lambda r: r),
            "gradchecks_over_training_precision_bound": len(over)}


# ----------------------------------------------- float64 recomputation


@partial(jax.jit, static_argnames=("spec", "grad_mode", "train"))
def _step_check(params, state, x, y, reg, key, eps, spec, grad_mode, train):
    return check(params, state, x, y, reg, key, spec, grad_mode, train=train, eps=eps,
                 tol=tolerances(jnp.float64)["directional_fd"])


def step_check(params, state, x, y, spec, reg, key, *, eps=FD_STEP, train=True, grad_mode="manual") -> dict:
    """`check` in float64 on the given (float32) batch and parameters, outside
    the compiled step (scripts/compare_grads.py): the same measures, judged
    with `tolerances(float64)`. Returns a row: manual_vs_autodiff,
    directional_jvp, directional_fd, smooth, passed."""
    with float64():
        up = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        c = _step_check(up(params), up(state), up(x), jnp.asarray(y), jnp.float64(reg), key,
                        jnp.float64(eps), spec, grad_mode, train)
    row = {k: float(getattr(c, k)) for k in COMPARISONS}
    row["smooth"] = bool(c.smooth)
    row["passed"] = passed(row, tolerances(jnp.float64))
    return row

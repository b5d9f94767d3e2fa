"""Three-way gradient checks: hand VJP vs jax.grad vs central finite differences.

All checks run in float64 (finite differences are meaningless in float32) and
report, per parameter leaf, CS231n's relative error with the maximum taken
over the leaf in numerator and denominator alike:

    rel_error(a, b) = max_i |a_i - b_i| / max(1e-8, max_i (|a_i| + |b_i|)).

Why not CS231n's elementwise max_i(|a_i - b_i| / max(1e-8, |a_i| + |b_i|))?
Some entries of a correct gradient are exactly zero (a BatchNorm beta whose
unit is dead for the whole batch, say). A central difference there returns
rounding noise, one ulp of the loss over 2h (about 4e-11 for L ~ 2, h = 1e-5),
and the elementwise form divides it by 1e-8 and reports 4e-3 for a correct
gradient. Scaling by the leaf's largest entry keeps what matters: a sign
error or a missing term still gives an error of order 1.

Hand VJP and jax.grad compute the same exact derivative in a different order,
so they agree to rounding (~1e-15); finite differences carry truncation and
rounding error (~1e-10 for h = 1e-5 on these functions).

Three entry points:
  check_layer     one layer, L = <forward(params, x), dy> for a random dy
  check_model     the whole network + softmax cross-entropy + L2
  step_check      the cheap check run during training: a directional finite
                  difference along a random unit vector v over all parameters,
                  (L(p + eps v) - L(p - eps v)) / 2 eps  vs  <grad, v>,
                  and hand vs jax.grad on the same batch.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import layers, losses, model

TOL_AUTODIFF = 1e-10     # hand VJP vs jax.grad, float64
TOL_FINITE_DIFF = 1e-6   # hand VJP vs central differences, float64
FD_STEP = 1e-5           # balances truncation (~h^2) against rounding (~1e-16 / h)


@contextlib.contextmanager
def float64():
    """float64 arrays and full-precision matrix products for the checks (GPUs
    multiply float32 matrices with TF32-like precision by default)."""
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        yield


class GradCheckError(AssertionError):
    """A hand-written gradient disagrees with its references."""


def rel_error(a, b) -> float:
    """max |a - b| / max(1e-8, max(|a| + |b|)) over all elements; 0.0 if empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def leaf_names(spec, tree, prefix=""):
    """Readable names for the leaves of a params-shaped tree: '0.dense.W', ..."""
    names = []
    for i, ((layer, _), leaf_dict) in enumerate(zip(spec, tree)):
        names += [f"{prefix}{i}.{layer}.{k}" for k in sorted(leaf_dict)]
    return names


def finite_diff(f, params, *, h=FD_STEP, samples=None, key=None):
    """Central differences of scalar f at params, on all or some entries.

    samples=None checks every entry; an int checks that many random entries
    per leaf (for large layers). Returns (flat indices per leaf, values per leaf).
    """
    flat, unravel = ravel_pytree(params)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(None if key is None else int(jax.random.randint(key, (), 0, 2**31 - 1)))
    picks = [np.arange(n) if samples is None or samples >= n else np.sort(rng.choice(n, samples, replace=False))
             for n in sizes]
    idx = jnp.asarray(np.concatenate([p + o for p, o in zip(picks, offsets[:-1])]).astype(np.int64))

    @jax.jit
    def one(i):
        e = jnp.zeros_like(flat).at[i].set(h)
        return (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * h)

    values = np.asarray(jax.lax.map(one, idx, batch_size=64))
    out, start = [], 0
    for p in picks:
        out.append(values[start:start + len(p)])
        start += len(p)
    return picks, out


def _compare(names, manual, autodiff, fd_picks, fd_values):
    """One row per leaf, and the list of failures as readable sentences."""
    rows, failures = [], []
    for name, m, a, picks, fd in zip(names, jax.tree.leaves(manual), jax.tree.leaves(autodiff),
                                     fd_picks, fd_values):
        m, a = np.asarray(m).ravel(), np.asarray(a).ravel()
        row = {"name": name, "size": int(m.size), "fd_entries": int(len(picks)),
               "manual_vs_autodiff": rel_error(m, a),
               "manual_vs_finite_diff": rel_error(m[picks], fd),
               "autodiff_vs_finite_diff": rel_error(a[picks], fd)}
        rows.append(row)
        # `not (e <= tol)` so that a NaN error (a NaN gradient) fails too
        if not row["manual_vs_autodiff"] <= TOL_AUTODIFF:
            failures.append(f"{name}: hand-written gradient differs from jax.grad "
                            f"(rel error {row['manual_vs_autodiff']:.2e} > {TOL_AUTODIFF:.0e})")
        if not row["manual_vs_finite_diff"] <= TOL_FINITE_DIFF:
            failures.append(f"{name}: hand-written gradient differs from finite differences "
                            f"(rel error {row['manual_vs_finite_diff']:.2e} > {TOL_FINITE_DIFF:.0e})")
    return rows, failures


def _report(title, rows, failures):
    return {
        "check": title,
        "max_rel_error_manual_vs_autodiff": max((r["manual_vs_autodiff"] for r in rows), default=0.0),
        "max_rel_error_manual_vs_finite_diff": max((r["manual_vs_finite_diff"] for r in rows), default=0.0),
        "max_rel_error_autodiff_vs_finite_diff": max((r["autodiff_vs_finite_diff"] for r in rows), default=0.0),
        "leaves": rows,
        "failures": failures,
        "ok": not failures,
    }


def assert_ok(report):
    """Raise GradCheckError listing every failed leaf of a report."""
    if not report["ok"]:
        raise GradCheckError(f"gradient check '{report['check']}' failed:\n  "
                             + "\n  ".join(report["failures"]))


def _away_from_zero(key, shape, low=0.1):
    """Random values with |v| in [low, 1 + low]: no ReLU kink within any FD step."""
    k1, k2 = jax.random.split(key)
    sign = jnp.where(jax.random.bernoulli(k1, 0.5, shape), 1.0, -1.0)
    return sign * (low + jax.random.uniform(k2, shape, jnp.float64))


def _random_params(key, spec, in_dim):
    """float64 parameters with BatchNorm gamma/beta far from 1/0 and nonzero biases,
    and running statistics that are not the initial 0/1."""
    params, state = model.init(key, spec, in_dim, jnp.float64)
    keys = iter(jax.random.split(jax.random.fold_in(key, 1), 4 * len(spec)))
    params = tuple({k: (v if k == "W" else 0.5 * jax.random.normal(next(keys), v.shape, v.dtype)
                        + (1.5 if k == "gamma" else 0.0))
                    for k, v in p.items()} for p in params)
    state = tuple({"mean": 0.3 * jax.random.normal(next(keys), s["mean"].shape, jnp.float64),
                   "var": jax.random.uniform(next(keys), s["var"].shape, jnp.float64, 0.5, 2.0)}
                  if s else s for s in state)
    return params, state


def check_layer(layer: str, *, batch=8, in_dim=6, out_dim=5, train=True, seed=0,
                backward=None, fd_samples=None):
    """Check one layer's backward (or the `backward` given) on L = <y, dy>.

    Random float64 input x (kept away from 0 for ReLU), random parameters
    (gamma/beta far from 1/0), random upstream gradient dy. The input x is
    checked as a leaf of its own, named 'x'.
    """
    with float64():
        _, fwd, bwd = layers.LAYERS[layer]
        backward = backward or bwd
        kp, kx, kd = jax.random.split(jax.random.key(seed), 3)
        width = out_dim if layer == "dense" else in_dim
        params, state = _random_params(kp, ((layer, width),), in_dim)
        p, s = params[0], state[0]
        x = _away_from_zero(kx, (batch, in_dim))
        y, _, cache = fwd(p, s, x, train)
        dy = jax.random.normal(kd, y.shape, jnp.float64)

        def scalar(p_and_x):
            out, _, _ = fwd(p_and_x[0], s, p_and_x[1], train)
            return jnp.vdot(out, dy)

        dp, dx = backward(p, cache, dy)
        manual = (dp, dx)
        autodiff = jax.grad(scalar)((p, x))
        picks, fd = finite_diff(scalar, (p, x), samples=fd_samples, key=kd)
        names = [f"{layer}.{k}" for k in sorted(p)] + ["x"]
        title = f"{layer} ({'train' if train else 'eval'} mode)" if layer == "batchnorm" else layer
        return _report(title, *_compare(names, manual, autodiff, picks, fd))


def check_loss(*, batch=8, num_classes=10, seed=0, scale=1.0):
    """Softmax cross-entropy's hand gradient w.r.t. the logits, and L2's w.r.t. W."""
    with float64():
        kz, ky, kw = jax.random.split(jax.random.key(seed), 3)
        z = scale * jax.random.normal(kz, (batch, num_classes), jnp.float64)
        labels = jax.random.randint(ky, (batch,), 0, num_classes)
        f = lambda z: losses.softmax_cross_entropy(z, labels)[0]
        manual = losses.softmax_cross_entropy_backward(losses.softmax_cross_entropy(z, labels)[1])
        picks, fd = finite_diff(f, z)
        ce = _compare(["softmax_ce.logits"], manual, jax.grad(f)(z), picks, fd)
        params = ({"W": jax.random.normal(kw, (4, 3), jnp.float64), "b": jnp.ones(3, jnp.float64)},)
        include = ("W", "b")  # an excluded leaf has an all-zero gradient: nothing to compare
        g = lambda p: losses.l2_penalty(p, 0.3, include)
        picks, fd = finite_diff(g, params)
        l2 = _compare(["l2.W", "l2.b"], losses.l2_penalty_grad(params, 0.3, include),
                      jax.grad(g)(params), picks, fd)
        return _report("softmax cross-entropy + L2", ce[0] + l2[0], ce[1] + l2[1])


def check_model(spec, *, in_dim=12, batch=8, reg=0.1, train=True, seed=0, fd_samples=None,
                manual=None):
    """Whole network + loss + L2: hand (or `manual`) vs jax.grad vs finite differences.

    manual: a function with the signature of model.loss_and_grads_manual, to
    check a replacement (the tests pass deliberately broken ones).
    """
    manual = manual or model.loss_and_grads_manual
    with float64():
        kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
        params, state = _random_params(kp, spec, in_dim)
        x = jax.random.normal(kx, (batch, in_dim), jnp.float64)
        y = jax.random.randint(ky, (batch,), 0, spec[-1][1])
        f = lambda p: model.loss(p, state, x, y, spec, reg, train=train)[0]
        _, g_manual, _, _ = manual(params, state, x, y, spec, reg, train=train)
        g_auto = jax.grad(f)(params)
        picks, fd = finite_diff(f, params, samples=fd_samples, key=ky)
        widths = "-".join(str(w) for n, w in spec if n == "dense")
        names = [n for n, _ in spec]
        bn = "" if "batchnorm" not in names else \
            " +BN before ReLU" if names.index("batchnorm") < names.index("relu") else " +BN after ReLU"
        title = f"model {in_dim}-{widths}{bn} ({'train' if train else 'eval'}), L2={reg}"
        return _report(title, *_compare(leaf_names(spec, params), g_manual, g_auto, picks, fd))


def check_layers(*, batch=8, seed=0):
    """Every layer (BatchNorm in both modes) and the loss terms."""
    return [check_layer("dense", batch=batch, seed=seed),
            check_layer("relu", batch=batch, seed=seed),
            check_layer("batchnorm", batch=batch, seed=seed, train=True),
            check_layer("batchnorm", batch=batch, seed=seed, train=False),
            check_loss(batch=batch, seed=seed)]


def check_all(hidden=(16,), *, batchnorm=False, batch=8, in_dim=12, reg=0.1, seed=0,
              fd_samples=None):
    """check_layers, then the model; with batchnorm, BN before ReLU (train and
    eval mode) and after ReLU (the seed notebook's placement)."""
    placements = [("none", True)]
    if batchnorm:
        placements = [("before", True), ("before", False), ("after", True)]
    return check_layers(batch=batch, seed=seed) + [
        check_model(model.make_spec(hidden, batchnorm=bn), in_dim=in_dim, batch=batch, reg=reg,
                    seed=seed, train=train, fd_samples=fd_samples)
        for bn, train in placements]


def format_table(reports) -> str:
    """Readable table: one line per leaf, grouped by check."""
    lines = [f"{'check / leaf':<44} {'size':>7} {'fd':>4}  {'hand~grad':>9}  {'hand~fd':>9}  {'grad~fd':>9}"]
    for r in reports:
        lines.append(f"{r['check']}{'' if r['ok'] else '   <-- FAILED'}")
        for leaf in r["leaves"]:
            lines.append(f"  {leaf['name']:<42} {leaf['size']:>7} {leaf['fd_entries']:>4}  "
                         f"{leaf['manual_vs_autodiff']:>9.1e}  {leaf['manual_vs_finite_diff']:>9.1e}  "
                         f"{leaf['autodiff_vs_finite_diff']:>9.1e}")
    return "\n".join(lines)

"""Three-way gradient checks: hand VJP vs jax.grad vs central finite differences.

All checks run in float64 and report, per parameter leaf, CS231n's relative error
with the maximum taken over the leaf in numerator and denominator alike:

    rel_error(a, b, floor) = max_i |a_i - b_i| / max(floor, max_i (|a_i| + |b_i|)).

Why not CS231n's elementwise max_i(|a_i - b_i| / max(1e-8, |a_i| + |b_i|))? Some
entries of a correct gradient are exactly zero (a BatchNorm beta whose unit is dead
for the whole batch, say), and a finite difference there returns rounding noise,
which the elementwise form divides by 1e-8. Scaling by the leaf's largest entry
keeps what matters: a sign error or a missing term still gives an error of order 1.

The floor is where rounding takes over, so a leaf of tiny gradients is compared to
the precision its references have, and no closer. A leaf fails when its largest
difference exceeds both the tolerance times the leaf's scale and the noise:

  hand vs jax.grad (TOL_AUTODIFF): both are exact, so they differ by rounding only,
  about k u G (u = 2^-53, G the largest gradient entry of the whole check) times
  the factor A by which BatchNorm in train mode amplifies rounding: x - mean(x)
  loses max_n |x_n| / sqrt(var + eps) in precision per unit, and A is the product
  over BatchNorm layers of its largest value (a unit nearly constant over the batch
  gives A ~ |x| / sqrt(eps)). `autodiff_noise` = AD_ROUNDING u A G, with
  AD_ROUNDING = 1024 for the cancellation in the sums of a backward pass.

  hand vs finite differences (TOL_FINITE_DIFF): the Richardson-extrapolated
  difference of `finitediff` (no h^2 truncation, which failed correct BatchNorm
  code at batch 2), whose rounding `fd_noise` bounds by FD_ROUNDING u max(|L|, 1) / h.
  An entry whose difference disagrees with its coarser twin by more than the
  tolerance (spread > TOL_FINITE_DIFF * leaf scale: a ReLU kink within 4h, or
  amplified rounding) proves nothing either way: it is set aside and counted
  (`fd_set_aside`); jax.grad still checks it. The spread comes from the loss
  alone, so a wrong backward pass cannot cause it.

Before any number is compared, the hand gradient's tree structure and leaf shapes
must equal jax.grad's: a missing, extra or misshapen leaf raises GradCheckError
naming it (`treecheck.tree_mismatch`).

Entry points:
  check_layer     one layer, L = <forward(params, x), dy> for a random dy
  check_loss      softmax cross-entropy and the L2 penalty
  check_model     the whole network + softmax cross-entropy + L2
Each compiles once per layout and shape and reuses the compilation, so a sweep of
many seeds costs little more than one check.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_flatten_with_path, tree_leaves

from . import layers, losses, model
from .finitediff import FD_ROUNDING, FD_STEP, UNIT_ROUNDOFF, FiniteDiff, fd_noise, finite_diff
from .treecheck import path_namer, tree_mismatch

__all__ = ["TOL_AUTODIFF", "TOL_FINITE_DIFF", "AD_ROUNDING", "FD_ROUNDING", "FD_STEP", "UNIT_ROUNDOFF",
           "GradCheckError", "float64", "rel_error", "autodiff_noise", "rounding_amplification", "fd_noise",
           "finite_diff", "FiniteDiff", "path_namer", "tree_mismatch", "check_tree", "leaf_names",
           "assert_ok", "check_layer", "check_loss", "check_model", "format_table"]

TOL_AUTODIFF = 1e-10     # hand VJP vs jax.grad, float64
TOL_FINITE_DIFF = 1e-6   # hand VJP vs finite differences, float64
AD_ROUNDING = 1024       # k of the rounding bound k u A G of hand vs jax.grad


@contextlib.contextmanager
def float64():
    """float64 arrays and full-precision matrix products for the checks (GPUs
    multiply float32 matrices with TF32-like precision by default)."""
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        yield


class GradCheckError(AssertionError):
    """A hand-written gradient disagrees with its references."""


def rel_error(a, b, floor: float = 1e-8) -> float:
    """max |a - b| / max(floor, max(|a| + |b|)) over all elements; 0.0 if empty.

    NaN anywhere in a or b gives NaN (which no `error <= tol` accepts). a and
    b must have the same shape: broadcasting would hide a misshapen gradient.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise GradCheckError(f"rel_error of arrays of different shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):  # inf - inf and inf / inf: NaN is the answer
        return float(np.max(np.abs(a - b)) / max(floor, float(np.max(np.abs(a) + np.abs(b)))))


def autodiff_noise(grad_scale, amplification=1.0) -> float:
    """Largest rounding difference expected between two exact computations of a
    gradient whose largest entry is grad_scale, through layers that amplify
    rounding by `amplification`: AD_ROUNDING * u * amplification * grad_scale."""
    return AD_ROUNDING * UNIT_ROUNDOFF * float(amplification) * float(grad_scale)


def check_tree(tree, ref, **kwargs) -> None:
    """Raise GradCheckError with `treecheck.tree_mismatch(tree, ref, **kwargs)` if there is one."""
    problem = tree_mismatch(tree, ref, **kwargs)
    if problem:
        raise GradCheckError(problem)


def leaf_names(spec, tree, prefix=""):
    """Readable names for the leaves of a params-shaped tree: '0.dense.W', ..."""
    if len(spec) != len(tree):
        raise GradCheckError(f"a tree of {len(tree)} layers for a spec of {len(spec)} layers")
    name = path_namer(tuple(f"{prefix}{i}.{layer}" for i, (layer, _) in enumerate(spec)))
    return [name(p) for p, _ in tree_flatten_with_path(tree)[0]]


def _compare(name, manual, autodiff, fd: FiniteDiff, amplification: float = 1.0):
    """One row per leaf, and the list of failures as readable sentences.

    Raises GradCheckError first if the hand gradient's tree differs from jax.grad's."""
    check_tree(manual, autodiff, what="hand-written gradient", ref_what="jax.grad gradient", name=name)
    grad_scale = max((float(np.max(np.abs(a), initial=0.0)) for a in tree_leaves(autodiff)), default=0.0)
    ad_floor = max(1e-8, autodiff_noise(grad_scale, amplification) / TOL_AUTODIFF)
    fd_floor = fd_noise(fd.loss) / TOL_FINITE_DIFF
    rows, failures = [], []
    for (path, m), a, picks, values, spread in zip(tree_flatten_with_path(manual)[0], tree_leaves(autodiff),
                                                   fd.picks, fd.values, fd.spread, strict=True):
        m, a, leaf = np.asarray(m).ravel(), np.asarray(a).ravel(), name(path)
        # entries whose finite difference is not smooth prove nothing: set aside (module docstring)
        scale = max(fd_floor, 2 * float(np.max(np.abs(a[picks]), initial=0.0)))
        smooth = spread <= TOL_FINITE_DIFF * scale
        kept = picks[smooth]
        row = {"name": leaf, "size": int(m.size), "fd_entries": int(len(kept)),
               "fd_set_aside": int(len(picks) - len(kept)),
               "manual_vs_autodiff": rel_error(m, a, ad_floor),
               "manual_vs_finite_diff": rel_error(m[kept], values[smooth], fd_floor),
               "autodiff_vs_finite_diff": rel_error(a[kept], values[smooth], fd_floor)}
        rows.append(row)
        # `not (e <= tol)` so that a NaN error (a NaN gradient) fails too
        if not row["manual_vs_autodiff"] <= TOL_AUTODIFF:
            failures.append(f"{leaf}: hand-written gradient differs from jax.grad "
                            f"(rel error {row['manual_vs_autodiff']:.2e} > {TOL_AUTODIFF:.0e})")
        if not row["manual_vs_finite_diff"] <= TOL_FINITE_DIFF:
            failures.append(f"{leaf}: hand-written gradient differs from finite differences "
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


# ------------------------------------------------------------------- inputs
# Drawn with NumPy: nothing to compile, whatever the shapes.


def _away_from_zero(rng, shape, low=0.1):
    """Random values with |v| in [low, 1 + low]: no ReLU kink within any FD step."""
    return rng.choice([-1.0, 1.0], shape) * (low + rng.random(shape))


def _random_params(rng, spec, in_dim, shapes=None):
    """float64 parameters shaped as model.init makes them (or as the (params,
    state) tree `shapes`): He-scaled weights, BatchNorm gamma/beta far from 1/0,
    nonzero biases, and running statistics that are not the initial 0/1."""
    params, state = shapes or jax.eval_shape(lambda: model.init(jax.random.key(0), spec, in_dim, jnp.float64))
    draw = {"W": lambda s: rng.normal(size=s) * np.sqrt(2 / s[0]),
            "b": lambda s: 0.5 * rng.normal(size=s), "beta": lambda s: 0.5 * rng.normal(size=s),
            "gamma": lambda s: 1.5 + 0.5 * rng.normal(size=s),
            "mean": lambda s: 0.3 * rng.normal(size=s), "var": lambda s: rng.uniform(0.5, 2.0, s)}
    fill = lambda tree: tuple({k: jnp.asarray(draw[k](v.shape)) for k, v in d.items()} for d in tree)
    return fill(params), fill(state)


def rounding_amplification(spec, params, state, x, train, key=None, rates=None):
    """The factor by which BatchNorm in train mode can amplify rounding: the product
    over its layers of max(1, max_j max_n |x_nj| / sqrt(var_j + eps)), for x the
    layer's input (module docstring). 1 without BatchNorm or in eval mode.
    key, rates: those of model.forward, for a network with dropout."""
    amp = jnp.ones((), x.dtype)
    for i, ((name, _), p, s) in enumerate(zip(spec, params, state, strict=True)):
        if layers.LAYERS[name].role == layers.NORM and train:
            kappa = jnp.max(jnp.abs(x), axis=0) * jax.lax.rsqrt(jnp.var(x, axis=0) + layers.BN_EPS)
            amp = amp * jnp.maximum(1.0, jnp.max(kappa))
        x = model.apply_layer(i, name, p, s, x, train=train, key=key, rates=rates)[0]
    return amp


def model_title(spec, in_dim) -> str:
    """'in-widths block', the block being the layer names up to the second linear
    layer: '3072-128-10 dense-relu', '12-16-10 input_dropout-dense-batchnorm-relu-dropout'."""
    linear = [i for i, (n, _) in enumerate(spec) if layers.LAYERS[n].role == layers.LINEAR]
    widths = "-".join(str(spec[i][1]) for i in linear)
    return f"{in_dim}-{widths} " + "-".join(n for n, _ in spec[:linear[1] if len(linear) > 1 else None])


# Each check below builds its loss and its gradients once per layout and keeps
# them (functools.lru_cache), so that jax.jit sees the same function objects and
# reuses its compilations. Every function the compiled code reads from a module
# is part of the cache key, so a replaced one (the tests patch in broken ones) is
# traced afresh; the loss reads the forward passes only, so a replaced backward
# pass leaves the compiled finite differences alone.


def _forward_fns(spec):
    return tuple(layers.LAYERS[name].forward for name, _ in spec) + (
        model.forward, model.loss, losses.softmax_cross_entropy, losses.l2_penalty)


def _backward_fns(spec):
    return tuple(layers.LAYERS[name].backward for name, _ in spec) + (
        model.backward, losses.softmax_cross_entropy_backward, losses.l2_penalty_grad)


@functools.lru_cache(maxsize=64)
def _layer_loss(forward, train: bool):
    def loss(p_and_x, state, dy, key, rate):
        return jnp.vdot(forward(p_and_x[0], state, p_and_x[1], train=train, key=key, rate=rate)[0], dy)
    return loss


@functools.lru_cache(maxsize=64)
def _layer_grads(name: str, forward, backward, train: bool):
    loss = _layer_loss(forward, train)

    @jax.jit
    def grads(p, state, x, dy, key, rate):
        _, _, cache = forward(p, state, x, train=train, key=key, rate=rate)
        return (backward(p, cache, dy), jax.grad(loss)((p, x), state, dy, key, rate),
                rounding_amplification(((name, None),), (p,), (state,), x, train))
    return grads


DEFAULT_RATE = 0.3   # a layer's rate where check_layer is given none


def layer_title(layer: str, options: dict) -> str:
    """'dense (no bias)', 'batchnorm (eval mode)', 'relu': the layer and the label of
    its variant with these options (layers.Layer.variants)."""
    label = next(label for label, opts in layers.LAYERS[layer].variants
                 if all(options.get(k, v) == v for k, v in opts.items()))
    return f"{layer} ({label})" if label else layer


def check_layer(layer: str, *, batch=8, in_dim=6, out_dim=5, train=True, bias=True, seed=0,
                backward=None, fd_samples=None, rate=None):
    """Check one layer's backward (or the `backward` given) on L = <y, dy>.

    Random float64 input x (kept away from 0: no ReLU kink within a step),
    random parameters (gamma/beta far from 1/0), random upstream gradient dy.
    The input x is checked as a leaf of its own, named 'x'. train: the mode;
    bias: whether a linear layer has one (a Dense before BatchNorm has none);
    rate: a layer with a rate (dropout) uses it (default DEFAULT_RATE) with a
    key drawn from the seed, the same for the hand VJP, jax.grad and the
    finite differences.
    """
    with float64():
        fns = layers.LAYERS[layer]
        loss = _layer_loss(fns.forward, train)
        grads = _layer_grads(layer, fns.forward, backward or fns.backward, train)
        rng = np.random.default_rng(seed)
        width = out_dim if fns.role == layers.LINEAR else in_dim
        shapes = jax.eval_shape(lambda: fns.init(jax.random.key(0), in_dim, width, jnp.float64, bias))[:2]
        params, state = _random_params(rng, None, in_dim, ((shapes[0],), (shapes[1],)))
        p, s = params[0], state[0]
        key, rate = ((jax.random.key(seed), jnp.float64(DEFAULT_RATE if rate is None else rate))
                     if fns.rate else (None, None))
        x = jnp.asarray(_away_from_zero(rng, (batch, in_dim)))
        dy = jnp.asarray(rng.normal(size=(batch, width)))
        manual, autodiff, amp = grads(p, s, x, dy, key, rate)
        fd = finite_diff(loss, (p, x), s, dy, key, rate, samples=fd_samples, rng=rng)
        title = layer_title(layer, {"train": train, "bias": bias})
        return _report(title, *_compare(path_namer((layer, "x")), manual, autodiff, fd, float(amp)))


L2_INCLUDE = ("W", "b")  # an excluded leaf has an all-zero gradient: nothing to compare


def _ce_loss(z, labels, smoothing=0.0):
    return losses.softmax_cross_entropy(z[0], labels, smoothing)[0]


def _l2_loss(params, reg):
    return losses.l2_penalty(params, reg, L2_INCLUDE)


def check_loss(*, batch=8, num_classes=10, seed=0, scale=1.0, smoothing=0.2):
    """Softmax cross-entropy's hand gradient w.r.t. the logits, plain and with label
    smoothing `smoothing`, and L2's w.r.t. W and b."""
    with float64():
        rng = np.random.default_rng(seed)
        z = (jnp.asarray(scale * rng.normal(size=(batch, num_classes))),)
        labels = jnp.asarray(rng.integers(0, num_classes, batch))
        ce = ([], [])
        for name, s in (("softmax_ce.logits", 0.0), ("softmax_ce_smoothed.logits", smoothing)):
            s = jnp.float64(s)
            manual = (losses.softmax_cross_entropy_backward(losses.softmax_cross_entropy(z[0], labels, s)[1]),)
            rows, failures = _compare(path_namer((name,)), manual, jax.grad(_ce_loss)(z, labels, s),
                                      finite_diff(_ce_loss, z, labels, s))
            ce[0].extend(rows)
            ce[1].extend(failures)
        params = ({"W": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))},)
        reg = jnp.float64(0.3)
        l2 = _compare(path_namer(("l2",)), losses.l2_penalty_grad(params, reg, L2_INCLUDE),
                      jax.grad(_l2_loss)(params, reg), finite_diff(_l2_loss, params, reg))
        return _report("softmax cross-entropy + L2", ce[0] + l2[0], ce[1] + l2[1])


@functools.lru_cache(maxsize=64)
def _model_loss(spec, train: bool, forward_fns: tuple):
    del forward_fns  # cache key only

    def loss(params, state, x, y, reg, key, rates):
        return model.loss(params, state, x, y, spec, reg, train=train, key=key, **rates)[0]
    return loss


@functools.lru_cache(maxsize=64)
def _model_grads(spec, train: bool, manual, forward_fns: tuple, backward_fns: tuple):
    loss = _model_loss(spec, train, forward_fns)
    del backward_fns  # cache key only

    @jax.jit
    def grads(params, state, x, y, reg, key, rates):
        return (manual(params, state, x, y, spec, reg, train=train, key=key, **rates)[1],
                jax.grad(loss)(params, state, x, y, reg, key, rates),
                rounding_amplification(spec, params, state, x, train, key, rates))
    return grads


def model_rates(spec, rates=None) -> dict:
    """{name: float64 rate} for the layers of spec with a rate: rates[name], or
    DEFAULT_RATE where rates has none."""
    return {n: jnp.float64((rates or {}).get(n, DEFAULT_RATE)) for n, _ in spec if layers.LAYERS[n].rate}


def check_model(spec, *, in_dim=12, batch=8, reg=0.1, train=True, seed=0, fd_samples=None,
                manual=None, rates=None):
    """Whole network + loss + L2: hand (or `manual`) vs jax.grad vs finite differences.

    manual: a function with the signature of model.loss_and_grads_manual, to
    check a replacement (the tests pass deliberately broken ones).
    rates: {layer name: rate} of the layers with one (`model_rates`); their
    masks come from a key drawn from the seed, the same for all three.
    """
    with float64():
        loss = _model_loss(spec, train, _forward_fns(spec))
        grads = _model_grads(spec, train, manual or model.loss_and_grads_manual, _forward_fns(spec),
                             _backward_fns(spec))
        rng = np.random.default_rng(seed)
        params, state = _random_params(rng, spec, in_dim)
        x = jnp.asarray(rng.normal(size=(batch, in_dim)))
        y = jnp.asarray(rng.integers(0, spec[-1][1], batch))
        rates = model_rates(spec, rates)
        args = (state, x, y, jnp.float64(reg), jax.random.key(seed), rates)
        g_manual, g_auto, amp = grads(params, *args)
        fd = finite_diff(loss, params, *args, samples=fd_samples, rng=rng)
        shown = "".join(f" {n}={float(r):g}" for n, r in rates.items())
        title = f"model {model_title(spec, in_dim)}{shown} ({'train' if train else 'eval'}), L2={reg}"
        namer = path_namer(tuple(f"{i}.{layer}" for i, (layer, _) in enumerate(spec)))
        return _report(title, *_compare(namer, g_manual, g_auto, fd, float(amp)))


def format_table(reports) -> str:
    """Readable table: one line per leaf, grouped by check. `fd`: entries compared with
    finite differences; `aside`: entries set aside as non-smooth."""
    lines = [f"{'check / leaf':<44} {'size':>7} {'fd':>4} {'aside':>5}  {'hand~grad':>9}  {'hand~fd':>9}  "
             f"{'grad~fd':>9}"]
    for r in reports:
        lines.append(f"{r['check']}{'' if r['ok'] else '   <-- FAILED'}")
        for leaf in r["leaves"]:
            lines.append(f"  {leaf['name']:<42} {leaf['size']:>7} {leaf['fd_entries']:>4} "
                         f"{leaf['fd_set_aside']:>5}  "
                         f"{leaf['manual_vs_autodiff']:>9.1e}  {leaf['manual_vs_finite_diff']:>9.1e}  "
                         f"{leaf['autodiff_vs_finite_diff']:>9.1e}")
    return "\n".join(lines)

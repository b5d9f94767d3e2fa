"""Optimizers as pure (init, update) pairs over pytrees; schedules live in `schedules`.

Contract (in the style of `jax.example_libraries.optimizers` and optax):

    opt = adam(1e-3)                         # an Optimizer(init, update) pair
    state = opt.init(params)                 # a NamedTuple: step counter + slots
    params, state = opt.update(grads, state, params)

- `params` and `grads` are any pytrees of floating arrays with the same structure
  and leaf shapes (nested dicts in this project).
- `update` returns the NEW PARAMETERS (not an additive update as in optax) and the
  new state. Nothing is mutated; every function is safe under `jax.jit`,
  `jax.vmap` and `jax.lax.scan`.
- Every state is a NamedTuple whose first field `step` is an int32 scalar array
  counting the updates already done (0 after `init`); the other fields are slot
  pytrees shaped like `params` (`MomentumState.v`, `AdamState.m`, ...).
- A learning rate is a positive number or a schedule. A schedule maps `step`, the
  number of updates already done (0-based int array, any shape), to a learning
  rate, with jnp operations only, so it can be jitted, vmapped and plotted over
  `jnp.arange(n)`. The update number t = step + 1 uses `schedule(step)`.
- Learning rates and hyperparameters are cast to each parameter's dtype, so
  float32 parameters stay float32 even with x64 enabled.
- Hyperparameters that are plain Python/NumPy numbers (or concrete jax scalars)
  are validated at construction and raise `SvhnJaxError`. A traced value (for
  example a learning rate vmapped over in a sweep) cannot be inspected and is
  passed through unchecked.
- `update` compares the structure and leaf shapes of grads, params and the
  state's slots with `jax.tree_util` at trace time (free inside jit) and raises
  `SvhnJaxError` naming the mismatch.

Update rules (g = gradient, t = step + 1, lr = schedule(step)):

    sgd       p <- p - lr g
    momentum  v <- mu v + g;  p <- p - lr v                  (PyTorch, optax)
    nesterov  v <- mu v + g;  p <- p - lr (g + mu v)         (v already updated)
    rmsprop   s <- decay s + (1-decay) g^2;  p <- p - lr g / (sqrt(s) + eps)
    adam      m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
              m^ = m / (1 - b1^t);  v^ = v / (1 - b2^t)
              p <- p - lr m^ / (sqrt(v^) + eps)              (Kingma & Ba 2015)

Conventions worth knowing: the CS231n momentum form `v <- mu v - lr g; p <- p + v`
matches ours only for a constant learning rate (under a schedule the lr is folded
into v and old velocities keep old learning rates). RMSprop here puts eps OUTSIDE
the square root (PyTorch, CS231n); optax and TensorFlow put it inside,
`sqrt(s + eps)`. Decay defaults to 0.9 (optax, TF; PyTorch and CS231n use 0.99).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import keystr, tree_flatten_with_path, tree_leaves, tree_map, tree_structure

from ..errors import SvhnJaxError
from .schedules import (SCHEDULES, LearningRate, as_schedule,
                        check_positive, check_unit_interval, constant, cosine, make_schedule,
                        step_decay, warmup)

Params = Any
Grads = Any

__all__ = [
    "Optimizer", "SgdState", "MomentumState", "RmspropState", "AdamState",
    "sgd", "momentum", "rmsprop", "adam", "get", "OPTIMIZERS",
    "constant", "step_decay", "cosine", "warmup", "make_schedule", "SCHEDULES",
]


class Optimizer(NamedTuple):
    """A pair of pure functions.

    init(params) -> state
    update(grads, state, params) -> (new_params, new_state)
    """

    init: Callable[[Params], Any]
    update: Callable[[Grads, Any, Params], tuple[Params, Any]]


class SgdState(NamedTuple):
    step: jax.Array          # int32 scalar: updates done


class MomentumState(NamedTuple):
    step: jax.Array          # int32 scalar: updates done
    v: Params                # velocity (sum of decayed gradients), like params


class RmspropState(NamedTuple):
    step: jax.Array          # int32 scalar: updates done
    s: Params                # running mean of g^2, like params


class AdamState(NamedTuple):
    step: jax.Array          # int32 scalar: updates done
    m: Params                # first moment (biased), like params
    v: Params                # second moment (biased), like params


def _describe(tree: Any, ref: Any, tree_name: str, ref_name: str) -> str | None:
    """Say how `tree` differs from `ref` (structure or leaf shapes), None if not."""
    if tree_structure(tree) != tree_structure(ref):
        paths = {keystr(k): k for k, _ in tree_flatten_with_path(tree)[0]}
        ref_paths = {keystr(k): k for k, _ in tree_flatten_with_path(ref)[0]}
        extra = sorted(set(paths) - set(ref_paths))
        missing = sorted(set(ref_paths) - set(paths))
        parts = []
        if extra:
            parts.append(f"{tree_name} have {_few(extra)} not in the {ref_name}")
        if missing:
            parts.append(f"{tree_name} lack {_few(missing)} present in the {ref_name}")
        if not parts:  # same leaf paths, different containers (dict vs list, None...)
            parts.append(f"structures differ: {tree_structure(tree)} vs "
                         f"{tree_structure(ref)}")
        return "; ".join(parts)
    for (path, a), b in zip(tree_flatten_with_path(tree)[0], tree_leaves(ref)):
        if jnp.shape(a) != jnp.shape(b):
            return (f"leaf {keystr(path)} has shape {jnp.shape(a)} in the {tree_name} "
                    f"but {jnp.shape(b)} in the {ref_name}")
    return None


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _check_update_args(opt_name: str, state_type: type, grads: Grads, state: Any,
                       params: Params) -> None:
    if not isinstance(state, state_type):
        raise SvhnJaxError(f"{opt_name}: expected a {state_type.__name__} from this "
                           f"optimizer's init, got {type(state).__name__}")
    problem = _describe(grads, params, "gradients", "parameters")
    if problem:
        raise SvhnJaxError(f"{opt_name}: gradient tree does not match the parameter "
                           f"tree: {problem}")
    for slot in state._fields[1:]:
        problem = _describe(params, getattr(state, slot), "parameters",
                            f"state slot '{slot}'")
        if problem:
            raise SvhnJaxError(f"{opt_name}: parameter tree does not match the "
                               f"optimizer state: {problem}")


def _init_state(opt_name: str, params: Params) -> jax.Array:
    """Check that every parameter leaf is floating; return step = 0."""
    for path, leaf in tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise SvhnJaxError(f"{opt_name}: parameter {keystr(path)} has dtype "
                               f"{jnp.result_type(leaf)}; parameters must be floating")
    return jnp.zeros((), jnp.int32)


def _like(x: Any, leaf: jax.Array) -> jax.Array:
    """Scalar hyperparameter `x` cast to the dtype of `leaf` (no promotion)."""
    return jnp.asarray(x).astype(jnp.result_type(leaf))


# --------------------------------------------------------------------------
# optimizers

def sgd(learning_rate: LearningRate) -> Optimizer:
    """Plain gradient descent: p <- p - lr g. State: SgdState(step)."""
    schedule = as_schedule(learning_rate)

    def init(params):
        return SgdState(step=_init_state("sgd", params))

    def update(grads, state, params):
        _check_update_args("sgd", SgdState, grads, state, params)
        lr = schedule(state.step)
        new_params = tree_map(lambda p, g: (p - _like(lr, p) * g).astype(p.dtype),
                              params, grads)
        return new_params, SgdState(step=state.step + 1)

    return Optimizer(init, update)


def momentum(learning_rate: LearningRate, mu: float = 0.9,
             nesterov: bool = False) -> Optimizer:
    """Heavy-ball or Nesterov momentum, PyTorch/optax convention.

    v <- mu v + g, then p <- p - lr v (heavy ball) or p <- p - lr (g + mu v)
    (Nesterov, with the updated v). v starts at 0. State: MomentumState(step, v).
    """
    schedule = as_schedule(learning_rate)
    check_unit_interval("momentum mu", mu)
    name = "nesterov" if nesterov else "momentum"

    def init(params):
        step = _init_state(name, params)
        return MomentumState(step=step, v=tree_map(jnp.zeros_like, params))

    def update(grads, state, params):
        _check_update_args(name, MomentumState, grads, state, params)
        lr = schedule(state.step)
        v = tree_map(lambda v, g: (_like(mu, v) * v + g).astype(v.dtype), state.v, grads)
        if nesterov:
            direction = tree_map(lambda g, v: g + _like(mu, v) * v, grads, v)
        else:
            direction = v
        new_params = tree_map(lambda p, d: (p - _like(lr, p) * d).astype(p.dtype),
                              params, direction)
        return new_params, MomentumState(step=state.step + 1, v=v)

    return Optimizer(init, update)


def rmsprop(learning_rate: LearningRate, decay: float = 0.9,
            eps: float = 1e-8) -> Optimizer:
    """RMSprop (Hinton's lecture 6e), eps OUTSIDE the square root.

    s <- decay s + (1-decay) g^2;  p <- p - lr g / (sqrt(s) + eps), s starts at 0.
    This is the PyTorch/CS231n placement; optax and TensorFlow use sqrt(s + eps).
    State: RmspropState(step, s).
    """
    schedule = as_schedule(learning_rate)
    check_unit_interval("rmsprop decay", decay)
    check_positive("rmsprop eps", eps)

    def init(params):
        step = _init_state("rmsprop", params)
        return RmspropState(step=step, s=tree_map(jnp.zeros_like, params))

    def update(grads, state, params):
        _check_update_args("rmsprop", RmspropState, grads, state, params)
        lr = schedule(state.step)

        def new_s(s, g):
            d = _like(decay, s)
            return (d * s + (1 - d) * g * g).astype(s.dtype)

        s = tree_map(new_s, state.s, grads)
        new_params = tree_map(
            lambda p, g, s: (p - _like(lr, p) * g / (jnp.sqrt(s) + _like(eps, p))
                             ).astype(p.dtype),
            params, grads, s)
        return new_params, RmspropState(step=state.step + 1, s=s)

    return Optimizer(init, update)


def adam(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> Optimizer:
    """Adam (Kingma & Ba 2015, Algorithm 1) with bias correction, t = step + 1.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  m^ = m / (1 - b1^t);
    v^ = v / (1 - b2^t);  p <- p - lr m^ / (sqrt(v^) + eps). m, v start at 0.
    This is L2-in-the-loss Adam, not AdamW. State: AdamState(step, m, v).
    """
    schedule = as_schedule(learning_rate)
    check_unit_interval("adam b1", b1)
    check_unit_interval("adam b2", b2)
    check_positive("adam eps", eps)

    def init(params):
        step = _init_state("adam", params)
        zeros = tree_map(jnp.zeros_like, params)
        return AdamState(step=step, m=zeros, v=tree_map(jnp.zeros_like, params))

    def update(grads, state, params):
        _check_update_args("adam", AdamState, grads, state, params)
        lr = schedule(state.step)
        t = state.step + 1

        def new_m(m, g):
            b = _like(b1, m)
            return (b * m + (1 - b) * g).astype(m.dtype)

        def new_v(v, g):
            b = _like(b2, v)
            return (b * v + (1 - b) * g * g).astype(v.dtype)

        def new_p(p, m, v):
            m_hat = m / (1 - _like(b1, p) ** t)
            v_hat = v / (1 - _like(b2, p) ** t)
            return (p - _like(lr, p) * m_hat / (jnp.sqrt(v_hat) + _like(eps, p))
                    ).astype(p.dtype)

        m = tree_map(new_m, state.m, grads)
        v = tree_map(new_v, state.v, grads)
        new_params = tree_map(new_p, params, m, v)
        return new_params, AdamState(step=t, m=m, v=v)

    return Optimizer(init, update)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": partial(momentum, nesterov=True),
    "rmsprop": rmsprop,
    "adam": adam,
}


def get(name: str, learning_rate: LearningRate, **kwargs: Any) -> Optimizer:
    """The optimizer called `name` (see OPTIMIZERS) with hyperparameters `kwargs`.

    "nesterov" is `momentum(..., nesterov=True)`. Unknown names or keyword
    arguments raise SvhnJaxError listing the valid ones.
    """
    if name not in OPTIMIZERS:
        raise SvhnJaxError(f"unknown optimizer {name!r}; choose one of "
                           f"{', '.join(OPTIMIZERS)}")
    factory = OPTIMIZERS[name]
    accepted = [p for p in inspect.signature(factory).parameters
                if p != "learning_rate"
                and not (isinstance(factory, partial) and p in factory.keywords)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise SvhnJaxError(f"optimizer {name!r} does not take {', '.join(unknown)}; "
                           f"it takes {', '.join(accepted) or 'no options'}")
    return factory(learning_rate, **kwargs)

"""Learning-rate schedules: step (updates already done, 0-based) -> learning rate.

Each schedule is a pure function of an int array `step` of any shape, written with
jnp operations only, so it can be jitted, vmapped and plotted over `jnp.arange(n)`.
The validation helpers here also check the optimizers' hyperparameters: they run at
construction time and never inspect a traced value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import SvhnJaxError

Schedule = Callable[[Any], Any]
LearningRate = float | Schedule


# --------------------------------------------------------------------------
# validation helpers (run at construction / trace time, never on traced values)

def concrete_scalar(name: str, x: Any) -> float | None:
    """`x` as a float if it is a concrete number, None if traced; else raise."""
    if isinstance(x, bool) or isinstance(x, np.bool_):
        raise SvhnJaxError(f"{name} must be a number, got bool {x!r}")
    if isinstance(x, jax.core.Tracer):
        if jnp.ndim(x) != 0:
            raise SvhnJaxError(f"{name} must be a scalar, got shape {jnp.shape(x)}")
        return None
    if isinstance(x, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        if np.ndim(x) != 0:
            raise SvhnJaxError(f"{name} must be a scalar, got shape {np.shape(x)}")
        if not np.issubdtype(np.asarray(x).dtype, np.number) or np.iscomplexobj(x):
            raise SvhnJaxError(f"{name} must be a real number, got {x!r}")
        return float(x)
    raise SvhnJaxError(f"{name} must be a number, got {type(x).__name__} {x!r}")


def check_positive(name: str, x: Any) -> None:
    v = concrete_scalar(name, x)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise SvhnJaxError(f"{name} must be a finite number > 0, got {v!r}")


def check_unit_interval(name: str, x: Any) -> None:
    v = concrete_scalar(name, x)
    if v is not None and not (0.0 <= v < 1.0):
        raise SvhnJaxError(f"{name} must be in [0, 1), got {v!r}")


def check_int(name: str, x: Any, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer)):
        raise SvhnJaxError(f"{name} must be an integer >= {minimum}, got {x!r}")
    if x < minimum:
        raise SvhnJaxError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def as_schedule(learning_rate: LearningRate) -> Schedule:
    if callable(learning_rate):
        return learning_rate
    return constant(learning_rate)



# --------------------------------------------------------------------------
# schedules: step (updates already done, 0-based) -> learning rate

def _float(step: Any) -> jax.Array:
    """`step` in the default float dtype (float64 under x64: int32 / int is float32)."""
    return jnp.asarray(step).astype(jnp.result_type(float))


def constant(lr: float) -> Schedule:
    """lr at every step."""
    check_positive("learning rate", lr)

    def schedule(step):
        return jnp.broadcast_to(jnp.asarray(lr), jnp.shape(step))

    return schedule


def step_decay(lr: float, *, rate: float, every: int) -> Schedule:
    """lr * rate ** (step // every): multiply by `rate` after each `every` steps."""
    check_positive("learning rate", lr)
    check_positive("step_decay rate", rate)
    every = check_int("step_decay every", every, 1)

    def schedule(step):
        return lr * jnp.power(rate, jnp.asarray(step) // every)

    return schedule


def cosine(lr: float, *, total_steps: int, final: float = 0.0) -> Schedule:
    """Cosine decay from lr at step 0 to final * lr at total_steps, flat after.

    lr * (final + (1 - final) * (1 + cos(pi * min(step, total_steps) / total_steps)) / 2)
    """
    check_positive("learning rate", lr)
    total_steps = check_int("cosine total_steps", total_steps, 1)
    f = concrete_scalar("cosine final", final)
    if f is not None and not (0.0 <= f <= 1.0):
        raise SvhnJaxError(f"cosine final must be in [0, 1], got {f!r}")

    def schedule(step):
        frac = jnp.minimum(_float(step), total_steps) / total_steps
        return lr * (final + (1 - final) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))

    return schedule


def exponential(lr: float, *, ratio: float, steps: int) -> Schedule:
    """lr * ratio ** (step / steps): from lr at step 0 to ratio * lr at `steps`, growing
    by the same factor every step (the learning-rate range test's sweep)."""
    check_positive("learning rate", lr)
    check_positive("exponential ratio", ratio)
    steps = check_int("exponential steps", steps, 1)

    def schedule(step):
        return lr * ratio ** (_float(step) / steps)

    return schedule


def warmup(schedule: LearningRate, *, steps: int) -> Schedule:
    """Linear warm-up for `steps` updates, then `schedule` from its own step 0.

    With lr0 = schedule(0): step < steps gives lr0 * (step + 1) / steps (so the
    first update uses lr0 / steps and update number `steps` uses lr0); step >=
    steps gives schedule(step - steps). The warm-up is prepended: the wrapped
    schedule's clock starts after it.
    """
    base = as_schedule(schedule)
    steps = check_int("warmup steps", steps, 1)

    def warmed(step):
        step = jnp.asarray(step)
        lr0 = base(jnp.zeros((), step.dtype))
        ramp = lr0 * (_float(step) + 1) / steps
        return jnp.where(step < steps, ramp, base(jnp.maximum(step - steps, 0)))

    return warmed


SCHEDULES = ("constant", "step", "cosine", "warmup-constant", "warmup-step",
             "warmup-cosine")   # what a run's --schedule may name; "exponential" is the range test's
_SCHEDULE_OPTIONS = {
    "constant": ((), ()),
    "step": (("rate", "every"), ()),
    "cosine": (("total_steps",), ("final",)),
    "exponential": (("ratio", "steps"), ()),
}


def make_schedule(name: str, lr: float, **kwargs: Any) -> Schedule:
    """The schedule called `name` (see SCHEDULES), for the command line.

    constant                         lr
    step         rate, every         step_decay(lr, rate=, every=)
    cosine       total_steps [final] cosine(lr, total_steps=, final=)
    warmup-X     warmup_steps + X's  warmup(X, steps=warmup_steps)

    For warmup-cosine, total_steps counts the whole run including the warm-up:
    the cosine part lasts total_steps - warmup_steps and reaches final * lr at
    step total_steps.
    """
    if name not in SCHEDULES and name != "exponential":
        raise SvhnJaxError(f"unknown schedule {name!r}; choose one of "
                           f"{', '.join(SCHEDULES)}")
    base_name = name.removeprefix("warmup-")
    kwargs = dict(kwargs)
    warmup_steps = None
    if name.startswith("warmup-"):
        if "warmup_steps" not in kwargs:
            raise SvhnJaxError(f"schedule {name!r} needs warmup_steps")
        warmup_steps = check_int("warmup_steps", kwargs.pop("warmup_steps"), 1)
    required, optional = _SCHEDULE_OPTIONS[base_name]
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise SvhnJaxError(f"schedule {name!r} needs {', '.join(missing)}")
    unknown = sorted(set(kwargs) - set(required) - set(optional))
    if unknown:
        takes = list(required) + list(optional)
        if warmup_steps is not None:
            takes.insert(0, "warmup_steps")
        raise SvhnJaxError(f"schedule {name!r} does not take {', '.join(unknown)}; "
                           f"it takes {', '.join(takes) or 'no options'}")
    if base_name == "constant":
        base = constant(lr)
    elif base_name == "step":
        base = step_decay(lr, **kwargs)
    elif base_name == "exponential":
        base = exponential(lr, **kwargs)
    else:
        total = kwargs.pop("total_steps")
        if warmup_steps is not None:
            total = check_int("cosine total_steps", total, 1)
            if total <= warmup_steps:
                raise SvhnJaxError(f"total_steps ({total}) must exceed warmup_steps "
                                   f"({warmup_steps})")
            total -= warmup_steps
        base = cosine(lr, total_steps=total, **kwargs)
    return base if warmup_steps is None else warmup(base, steps=warmup_steps)


class ScheduleSpec(NamedTuple):
    """A schedule as data: hashable, so it can sit in the step's static settings, and
    readable, so a run can say what it uses. `build(spec, lr)` makes the function.

    name          one of SCHEDULES, or "exponential"
    total_steps   cosine: the run's length in updates (warm-up included)
    warmup_steps  warmup-*: updates of the linear warm-up
    decay_factor  step: the factor applied every decay_every updates
    decay_every   step: updates between decays
    ratio         exponential: the learning rate grows by this factor over total_steps
    """

    name: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    decay_factor: float = 0.1
    decay_every: int = 0
    ratio: float = 1.0


def build(spec: ScheduleSpec, lr: LearningRate) -> Schedule:
    """The schedule function that `spec` describes, for a base learning rate `lr`
    (a float or a traced scalar: a sweep's learning rates are values of the program)."""
    base = spec.name.removeprefix("warmup-")
    options = {"constant": {}, "cosine": {"total_steps": spec.total_steps},
               "step": {"rate": spec.decay_factor, "every": spec.decay_every},
               "exponential": {"ratio": spec.ratio, "steps": spec.total_steps}}.get(base)
    if options is None:
        raise SvhnJaxError(f"unknown schedule {spec.name!r}; choose one of {', '.join(SCHEDULES)}")
    if base != spec.name:
        options["warmup_steps"] = spec.warmup_steps
    return make_schedule(spec.name, lr, **options)

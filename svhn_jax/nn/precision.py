"""Precision: the unit roundoff of the arithmetic that made a gradient, and the
tolerances and bounds derived from it.

A float32 matrix product is exact to float32's unit roundoff u = 2^-24 on a
CPU; a GPU multiplies float32 matrices with TensorFloat-32 by default (inputs
rounded to a 10-bit mantissa, u = 2^-11), a TPU with bfloat16 passes (7 bits,
u = 2^-8), unless jax_default_matmul_precision asks for more. The per-step
check (`stepcheck`) computes at its own precision, `CHECK_PRECISION`, so its
tolerance is float32's on every backend; what the training's precision costs
is recorded apart, against `training_precision_bound`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from . import layers

F32_ROUNDOFF = 2.0 ** -24     # unit roundoff of float32
TF32_ROUNDOFF = 2.0 ** -11    # TensorFloat-32: float32 matrix products on recent GPUs, by default
BF16_ROUNDOFF = 2.0 ** -8     # bfloat16 passes: float32 matrix products on TPUs, by default
TOLERANCE_ROUNDOFFS = 2 ** 10
CHECK_PRECISION = "highest"   # the check's own matrix products: full float32

# jax_default_matmul_precision values that name a precision, whatever the backend
_NAMED_ROUNDOFF = {"highest": F32_ROUNDOFF, "float32": F32_ROUNDOFF, "f32_f32_f32": F32_ROUNDOFF,
                   "high": TF32_ROUNDOFF, "tensorfloat32": TF32_ROUNDOFF, "bfloat16_3x": TF32_ROUNDOFF,
                   "bfloat16": BF16_ROUNDOFF}
_DEFAULT_ROUNDOFF = {"cpu": F32_ROUNDOFF, "gpu": TF32_ROUNDOFF, "tpu": BF16_ROUNDOFF}


def matmul_roundoff(backend: str | None = None, precision: str | None = None) -> float:
    """Unit roundoff of float32 matrix products as the training computes them on
    `backend` ('cpu', 'gpu', 'tpu'; default: the current one) under the
    jax_default_matmul_precision `precision` (default: the one in force where
    this is called, so inside a trace the one the trace sees). A precision that
    names a format is taken at its word, even on a CPU, which computes every
    float32 product in full (the check then recomputes what it need not: cost,
    never a wrong verdict)."""
    backend = backend or jax.default_backend()
    precision = str(jax.config.jax_default_matmul_precision if precision is None else precision).lower()
    return _NAMED_ROUNDOFF.get(precision, _DEFAULT_ROUNDOFF.get(backend, TF32_ROUNDOFF))


def tolerance(roundoff: float = F32_ROUNDOFF) -> float:
    """The largest error a comparison may show on correct code: TOLERANCE_ROUNDOFFS
    unit roundoffs of the arithmetic that made the compared gradients, the
    check's own float32 (6.1e-5) unless told otherwise."""
    return TOLERANCE_ROUNDOFFS * roundoff


def tolerances(dtype=jnp.float32) -> dict:
    """Per comparison, the tolerance of a check computed in `dtype` (float64:
    `step_check`): the two exact comparisons get 2^10 roundoffs of `dtype`; the
    central difference keeps float32's whatever the dtype, since its own
    rounding and truncation (about 1e-9 of <g, v>) are what limit it."""
    exact = tolerance(float(jnp.finfo(dtype).eps) / 2)
    return {"manual_vs_autodiff": exact, "directional_jvp": exact, "directional_fd": tolerance()}


def training_precision_bound(spec, batch: int, roundoff: float) -> float:
    """The expected size of `training_precision_error` for products rounded to
    `roundoff`: a product whose inputs are rounded moves each entry by up to
    2u relative to its terms (first order); the gradient of the first layer
    passes through two products per Dense layer (forward and backward), and
    the sum over the batch's B rows, whose terms are of either sign, loses
    about sqrt(B) more (a random walk, not a worst case: information, not a
    verdict). 0 when training multiplies at the check's precision."""
    if roundoff <= F32_ROUNDOFF:
        return 0.0
    products = 2 * sum(layers.LAYERS[name].role == layers.LINEAR for name, _ in spec)
    return 2 * roundoff * products * math.sqrt(batch)

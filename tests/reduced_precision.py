"""A test double: a CPU that multiplies float32 matrices as a GPU or a TPU does.

A CPU computes every float32 matrix product in full, whatever
jax_default_matmul_precision asks. A GPU's TensorFloat-32 products round their
inputs to a 10-bit mantissa, a TPU's bfloat16 passes to 7 bits, and accumulate
in float32. `dense` is the Dense layer with every product it makes (forward,
hand backward, and jax.grad's transposed ones through a custom VJP) taken that
way whenever the precision in force where it is traced asks for it:
'tensorfloat32' or 'bfloat16'; 'highest' (what the check asks for) stays
exact. Patch it in with `use(monkeypatch)` and trace under
`jax.default_matmul_precision(...)`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from svhn_jax.nn import layers

MANTISSA_BITS = {"tensorfloat32": 10, "bfloat16": 7}


def round_mantissa(x, bits: int):
    """float32 x rounded to `bits` explicit mantissa bits, to nearest, ties to even."""
    drop = 23 - bits
    i = jax.lax.bitcast_convert_type(x, jnp.uint32)
    i = i + jnp.uint32((1 << (drop - 1)) - 1) + ((i >> drop) & jnp.uint32(1))
    return jax.lax.bitcast_convert_type(i & jnp.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF), jnp.float32)


@functools.lru_cache(maxsize=None)
def _rounded_matmul(bits: int):
    r = lambda a: round_mantissa(a, bits)

    @jax.custom_vjp
    def matmul(a, b):
        return r(a) @ r(b)

    def fwd(a, b):
        return matmul(a, b), (a, b)

    def bwd(res, g):
        a, b = res
        return r(g) @ r(b).T, r(a).T @ r(g)

    matmul.defvjp(fwd, bwd)
    return matmul


def matmul(a, b):
    """a @ b at the precision in force while tracing (see the module docstring)."""
    bits = MANTISSA_BITS.get(str(jax.config.jax_default_matmul_precision).lower())
    if bits is None or a.dtype != jnp.float32:
        return a @ b
    return _rounded_matmul(bits)(a, b)


def dense_forward(params, state, x, *, train=True, axis_name=None, key=None, rate=None):
    y = matmul(x, params["W"])
    return (y + params["b"] if "b" in params else y), state, x


def dense_backward(params, cache, dy):
    dW = matmul(cache.T, dy)
    grads = {"W": dW, "b": dy.sum(axis=0)} if "b" in params else {"W": dW}
    return grads, matmul(dy, params["W"].T)


def use(monkeypatch, backward=None):
    """Patch the double in as layers.LAYERS['dense'] (with `backward` wrapped
    around its backward, to inject a bug)."""
    bwd = dense_backward if backward is None else backward(dense_backward)
    monkeypatch.setitem(layers.LAYERS, "dense", layers.LAYERS["dense"]._replace(forward=dense_forward, backward=bwd))

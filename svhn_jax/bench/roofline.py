"""The roofline of a training epoch: the least time this machine allows for it.

Two floors, each a lower bound on the seconds of an epoch of `steps` steps:

    compute floor = FLOPs of the epoch's matrix products / matmul peak
    memory floor  = steps * (state bytes / bandwidth at the state's size
                             + batch bytes / streaming bandwidth)

The step can run no faster than the larger floor (`bound` names it), and
frac_floor = larger floor / measured seconds says how close it came (1 = at
the floor). The peak and both bandwidths are measured in the same run
(`machine.peak_gflops`, `machine.bandwidth_gbs`).

FLOPs: `refs.flops_per_epoch`, the matrix products only (2x the forward's);
the elementwise work (normalisation, shifts, ReLU, softmax, Adam) is left out.

The byte model: the bytes one step must move at least. For a network of P
float32 parameters, an optimizer keeping S slots per parameter (Adam: m and
v, S = 2; momentum 1; SGD 0) and a batch of B rows of R bytes each
(R = 3072 for uint8 images, 4 D for float32 features of width D):

    parameters   read by the forward and the backward, written by the update   2 * 4P
    gradients    written by the backward, read by the update                   2 * 4P
    slots        each read and written by the update                           2 * S * 4P
    batch        B rows of the data set, B labels and B indices of the
                 epoch's order (int32)                                         B * (R + 8)

    state bytes = 4P (4 + 2S)  (Adam: 32 P);  batch bytes = B (R + 8)

It is a floor, not a count of what XLA does: each array moves once each way
(the forward and the backward share their reads of the parameters), and the
activations (B x width per layer, a few percent of the state here) are left
out, as if they stayed in registers. The state is touched every step, so it
stays in the caches when it fits there: its bytes are divided by the
bandwidth measured at its own size. The rows of the data set are gathered
from all of it once an epoch: they move at the bandwidth measured over a
working set of the data set's size.
"""

from __future__ import annotations

import math

FLOAT_BYTES = 4
INDEX_BYTES = 4        # int32 label and int32 index of each row
SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1, "adam": 2}


def param_count(spec: tuple, in_dim: int) -> int:
    """Number of parameters of model.init(spec, in_dim) (shapes only, nothing allocated)."""
    import jax

    from ..nn import model

    params, _ = jax.eval_shape(lambda: model.init(jax.random.key(0), spec, in_dim))
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def state_bytes(params: int, optimizer: str = "adam") -> int:
    """Bytes of parameters, gradients and optimizer slots one step moves: 4P (4 + 2S)."""
    return FLOAT_BYTES * params * (4 + 2 * SLOTS[optimizer])


def batch_bytes(batch: int, row_bytes: int) -> int:
    """Bytes of one batch: its rows, labels and indices, B (R + 8)."""
    return batch * (row_bytes + 2 * INDEX_BYTES)


def floors(*, flops: float, steps: int, state: int, batch: int, peak_gflops: float,
           state_gbs: float, stream_gbs: float) -> dict:
    """The two floors of an epoch and which one bounds it:

    {"compute_floor_s", "memory_floor_s", "floor_s" (the larger), "bound"
     ("compute" or "memory"), "bytes_per_epoch"}
    """
    compute = flops / (peak_gflops * 1e9)
    memory = steps * (state / (state_gbs * 1e9) + batch / (stream_gbs * 1e9))
    return {"compute_floor_s": compute, "memory_floor_s": memory, "floor_s": max(compute, memory),
            "bound": "compute" if compute >= memory else "memory",
            "bytes_per_epoch": steps * (state + batch)}


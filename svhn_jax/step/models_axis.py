"""The `models` mesh axis: K models stacked along a leading axis (a sweep group, an
ensemble) spread over the devices, about K/D on each, still one compiled program.

    Placement     the mesh, the K models asked for and the K' trained
    placement(k)  how K models go onto the devices
    spread        pad the stacked axis to K' and shard it along `models`
    replicate     the same copy on every device of the mesh (data, evaluation sets)
    real          the first K of K' stacked models, on the host side of a result

The training program (`train.run_steps_many`, a vmap over the stacked axis) needs no
change: jit partitions it by the shardings of its arguments (the mesh's axis type is
Auto, so sharding propagation decides; an Explicit axis would make the data gather
inside the step ambiguous). Each device trains its own models on its own copy of the
data, and no collective runs during training, because no model reads another's
numbers; a model's arithmetic is the same on any device count, so results match the
one-device program up to float32 summation order.

K not divisible by the devices: with r = ceil(K/D) models per device (the fewest
rounds possible), ceil(K/r) devices are used and K is padded up to a multiple of that
with copies of the first models (trained, then dropped by `real`). NamedSharding needs
an even split; padding costs no rounds, and taking as few devices as r allows keeps it
small: K=5 on 4 devices trains 6 slots on 3 devices (2 rounds), not 8 on 4.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

AXIS = "models"


class Placement(NamedTuple):
    mesh: Any      # a 1-D jax.sharding.Mesh over the devices used; None on one device
    k: int         # models asked for
    padded: int    # models trained: k rounded up to a multiple of the devices used


def placement(k: int, devices=None) -> Placement:
    """Where k stacked models go, on the devices given (default all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    rounds = -(-k // len(devices))
    d = -(-k // rounds)
    if d <= 1:
        return Placement(None, k, k)
    mesh = jax.make_mesh((d,), (AXIS,), axis_types=(AxisType.Auto,), devices=devices[:d])
    return Placement(mesh, k, rounds * d)


def spread(tree, p: Placement):
    """Every leaf (k, ...) -> (p.padded, ...), sharded along `models`: slot i holds
    model i mod k, so a padding slot repeats a real model."""
    if p.mesh is None:
        return tree
    if p.padded > p.k:
        idx = np.arange(p.padded) % p.k
        tree = jax.tree.map(lambda a: a[idx], tree)
    return jax.device_put(tree, NamedSharding(p.mesh, PartitionSpec(AXIS)))


def replicate(tree, p: Placement):
    """Every leaf copied onto each device of the mesh (unchanged on one device)."""
    if p.mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(p.mesh, PartitionSpec()))


def real(tree, p: Placement):
    """The first p.k entries of every leaf's stacked axis: the padding dropped."""
    if p.padded == p.k:
        return tree
    return jax.tree.map(lambda a: a[: p.k], tree)

"""Where K models and their data sit: one device mesh with a `models` and a `data` axis.

    Placement        the mesh, the K models asked for, the K' trained, stacked or not
    placement        how K models go onto N devices
    make_mesh        a (models, data) mesh over the first devices
    data_placement   one model on n devices (benchmarks, the distributed gradient check)
    check_batch      the global batch must split over the data axis
    replicate        a pytree on every device of the mesh (data, evaluation sets)
    spread           stacked models: pad the leading axis to K' and shard it along `models`
    real             the first K of K' stacked models
    shard_rows       the training set split by rows along `data` (local_rows: this process's)
    to_host          a (possibly sharded, multi-process) pytree as NumPy arrays

The shape, for K models on N devices:

  one model (a single run, a range test): models 1, data N. The global batch (the
      configured --batch) is split along `data`, B / N rows per device; parameters
      and optimizer state are replicated; the training set is stored split by rows.
  K stacked models (an ensemble, a sweep group): with r = ceil(K / N) rounds (models
      per device, the fewest possible), m = ceil(K / r) devices along `models`, and the
      rest of the N devices along `data`: d = N // m. K is padded to K' = r * m with
      copies of the first models (trained, then dropped by `real`): NamedSharding
      needs an even split. So K = 2 on 4 devices is 2 x 2 (each member data-parallel
      on 2 devices), K = 4 on 4 is 4 x 1, K = 5 on 4 is 3 x 1 (6 slots, 2 rounds: a
      fourth device would not save a round).

No model reads another's numbers, so the `models` axis needs no collective; a
model's arithmetic is the same on any mesh, and results match one device up to the
order of float32 summation along `data`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ..errors import SvhnJaxError

MODELS, DATA = "models", "data"


class Placement(NamedTuple):
    """Hashable: the compiled segment takes it as a static argument."""

    mesh: Any        # a jax.sharding.Mesh with axes (MODELS, DATA); None: one device
    k: int           # models asked for
    padded: int      # models trained: k rounded up to a multiple of the models axis
    stacked: bool    # states carry a leading model axis (False: one model, unstacked)

    @property
    def data(self) -> int:
        """Devices along `data`: the batch is split over them."""
        return 1 if self.mesh is None else self.mesh.shape[DATA]

    @property
    def models(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[MODELS]

    @property
    def devices(self) -> int:
        return self.models * self.data

    def describe(self) -> str:
        if self.mesh is None:
            return "1 device"
        pad = f", {self.padded - self.k} padding slot(s)" if self.padded > self.k else ""
        return f"{self.devices} devices: models {self.models} x data {self.data}{pad}"


def device_count(devices: str | int, *, stacked: bool) -> int:
    """How many devices `devices` (a setting: a number, "all" or "auto") asks for.
    "auto": all of them for stacked models or several processes, else one."""
    available = jax.device_count()
    if devices == "auto":
        return available if stacked or jax.process_count() > 1 else 1
    if devices == "all":
        return available
    try:
        n = int(devices)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(devices).strip() != str(n):
        raise SvhnJaxError(f"--devices must be a positive integer, all or auto, got {devices!r}")
    if n > available:
        hint = (f"; on CPU, set JAX_NUM_CPU_DEVICES={n} in the environment before JAX starts "
                f"(e.g. JAX_NUM_CPU_DEVICES={n} svhn-jax ...)" if jax.default_backend() == "cpu"
                else "")
        raise SvhnJaxError(f"--devices {n} asks for more devices than JAX sees: "
                           f"{available} {jax.default_backend()} device(s){hint}")
    return n


def make_mesh(models: int, data: int):
    """A (models, data) mesh over the first models * data devices, in order, so that a
    process's devices hold one contiguous range of rows (see local_rows).

    Auto axis types: XLA propagates shardings through the jitted step (the autodiff
    mode and the batch gather rely on it), and shard_map marks the manual regions.
    """
    devices = np.asarray(jax.devices()[: models * data]).reshape(models, data)
    return jax.sharding.Mesh(devices, (MODELS, DATA), axis_types=(AxisType.Auto,) * 2)


def placement(k: int, devices: str | int = "auto", *, batch: int, stacked: bool) -> Placement:
    """Where k models go on the devices that `devices` asks for (see the module
    docstring); the batch must split over the data axis."""
    n = device_count(devices, stacked=stacked)
    if not stacked and k != 1:
        raise SvhnJaxError(f"{k} models must be stacked")
    rounds = -(-k // n)
    m = -(-k // rounds) if stacked else 1
    d = n // m
    place = Placement(None if m * d == 1 else make_mesh(m, d), k, rounds * m if m > 1 else k, stacked)
    if processes_hold_unequal_shares(place):
        raise SvhnJaxError(f"{place.describe()} over {jax.process_count()} processes gives them "
                           f"unequal shares of the mesh; use --devices all (every process's "
                           f"devices)")
    check_batch(batch, place)
    return place


def data_placement(n: int) -> Placement:
    """One model, its batch split over the first n devices: a mesh even for n = 1
    (benchmarks measure what the mesh itself costs)."""
    return Placement(make_mesh(1, device_count(n, stacked=False)), 1, 1, False)


def processes_hold_unequal_shares(place: Placement) -> bool:
    if place.mesh is None or jax.process_count() == 1:
        return False
    counts = np.bincount([d.process_index for d in place.mesh.devices.flat],
                         minlength=jax.process_count())
    return len(set(counts.tolist())) > 1


def check_batch(batch: int, place: Placement) -> int:
    """The global batch, if it splits into equal shares along `data`."""
    d = place.data
    if batch % d:
        raise SvhnJaxError(f"the batch of {batch} does not split evenly over {d} devices "
                           f"({place.describe()}); use a multiple of {d} (e.g. --batch "
                           f"{max(d, batch // d * d)}) or other --devices")
    return batch


def _put(tree, sharding):
    """device_put that also works when the mesh spans processes: every process passes
    the same values, and each leaf is assembled from this process's copy (PRNG keys
    via their raw data)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def leaf(a):
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(sharding, a.ndim):
            return a
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(leaf(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(leaf, tree)


def replicate(tree, place: Placement):
    """The same pytree on every device of the mesh (unchanged on one device)."""
    return tree if place.mesh is None else _put(tree, NamedSharding(place.mesh, P()))


def spread(tree, place: Placement):
    """Stacked models, every leaf (k, ...) -> (padded, ...) sharded along `models`:
    slot i holds model i mod k, so a padding slot repeats a real model."""
    if place.padded > place.k:
        idx = np.arange(place.padded) % place.k
        tree = jax.tree.map(lambda a: a[idx], tree)
    return tree if place.mesh is None else _put(tree, NamedSharding(place.mesh, P(MODELS)))


def place_models(tree, place: Placement):
    """A train state (or any per-model pytree) laid out as the segment expects it:
    spread when stacked, replicated when not."""
    return spread(tree, place) if place.stacked else replicate(tree, place)


def real(tree, place: Placement):
    """The first place.k entries of every stacked leaf: the padding dropped."""
    if not place.stacked or place.padded == place.k:
        return tree
    return jax.tree.map(lambda a: a[: place.k], tree)


def to_host(tree):
    """Every leaf as a NumPy array (PRNG keys as keys). A leaf sharded over devices of
    other processes is gathered first: a collective, so every process must call it."""
    def leaf(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
            return a if isinstance(a, jax.Array) and jax.dtypes.issubdtype(
                a.dtype, jax.dtypes.prng_key) else np.asarray(a)
        from jax.experimental import multihost_utils

        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = multihost_utils.process_allgather(jax.random.key_data(a), tiled=True)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(leaf, tree)


def padded_rows(n: int, place: Placement) -> int:
    """n rounded up to a multiple of the data axis (shards must be equal)."""
    return -(-n // place.data) * place.data


def pad_rows(a, rows):
    a = np.asarray(a)
    return np.concatenate([a, np.zeros((rows - len(a),) + a.shape[1:], a.dtype)]) if rows > len(a) else a


def local_rows(n: int, place: Placement) -> slice:
    """The rows of the padded training set (n rows, padded to padded_rows) that this
    process's devices hold: all of them in one process; with several, the process
    loads only these (see shard_rows)."""
    if place.mesh is None:
        return slice(0, n)
    rows = padded_rows(n, place)
    index = NamedSharding(place.mesh, P(DATA)).addressable_devices_indices_map((rows,))
    parts = sorted(set(i[0].indices(rows)[:2] for i in index.values()))
    if any(a[1] != b[0] for a, b in zip(parts, parts[1:])):
        raise SvhnJaxError(f"this process's devices hold rows {parts}, not one contiguous range; "
                           f"build the mesh with make_mesh (devices in process order)")
    return slice(parts[0][0], parts[-1][1])


def shard_rows(X, y, place: Placement, n: int | None = None):
    """The training arrays X (uint8 images (N, 3072), kept uint8; anything else becomes
    float32) and y (int32) on the placement: on one device as they are (a CPU device
    shares an aligned host array), else split by rows along `data` and replicated
    along `models`.

    n is the size of the whole training set (default len(y)). X and y are either the
    whole set or, with several processes, just this process's rows local_rows(n,
    place) (clipped to n), which is all it has to load. The set is padded with zero
    rows to a multiple of the data axis; the padding is never trained on, because
    epoch_order draws from range(n) only.
    """
    x_dtype = np.uint8 if X.dtype == np.uint8 else np.float32
    if place.mesh is None:
        return jax.device_put(np.asarray(X, x_dtype)), jax.device_put(np.asarray(y, np.int32))
    n = len(y) if n is None else n
    part = local_rows(n, place)
    if len(y) == n and len(y) != part.stop - part.start:
        X, y = X[part.start:min(part.stop, n)], y[part.start:min(part.stop, n)]
    rows = padded_rows(n, place)
    sharding = NamedSharding(place.mesh, P(DATA))
    local = [pad_rows(np.asarray(a, dtype), part.stop - part.start)
             for a, dtype in ((X, x_dtype), (y, np.int32))]
    return tuple(jax.make_array_from_process_local_data(sharding, a, (rows,) + a.shape[1:])
                 for a in local)

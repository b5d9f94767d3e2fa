"""Data-parallel training on a device mesh, built on JAX's own SPMD.

One mesh axis, `data`: the global batch (the configured --batch, unchanged) is
split along it, P devices taking B / P rows each; parameters, BatchNorm state,
optimizer state and the step's PRNG key are replicated; the training set is
stored sharded (each device holds n / P of its rows).

    make_mesh        a 1-D mesh over N devices (or "all")
    check_batch      the global batch must split evenly over the mesh
    replicate        put a pytree (a TrainState, an EvalSet) on every device
    local_rows       the training rows this process's devices hold
    shard_rows       put the training arrays on the mesh, split by rows
    loss_and_grads   model.GRAD_MODES[mode] for a global batch sharded on the mesh
    get_batch        train.get_batch laid out along the mesh
    run_steps        train.run_steps on a mesh: count steps in one compiled scan
    initialize       join several processes (jax.distributed), from flags or env
    sum_over_processes, gather_rows   what one process holds, summed or joined over all

The gradient modes, both over the global batch:
  autodiff: jax.grad of the global-batch loss under jit; XLA partitions the
            program from the shardings of its inputs and inserts the reductions.
  manual:   each device runs the hand backward on its rows inside
            `jax.shard_map`; BatchNorm is synchronised and the gradient
            reduction is a hand-written `lax.psum` (model.allreduce_grads).

Every step reads its batch through `train.get_batch` with the global batch
order of `train.epoch_order`, so data order, augmentation and PRNG depend on
the seed and step only, never on the device count: 1, 2 or 4 devices train the
same model up to the order of float32 summation. XLA compiles the batch gather
from the sharded set into a masked local gather and one all-reduce of the
(B, D) batch: the set itself never moves.

Several processes (jax.distributed) run the same program on one mesh over all
their devices: each loads only its devices' rows (local_rows, shard_rows), and
every replicated result (state, metrics) is readable in every process.
"""

from __future__ import annotations

import os
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import train
from ..nn import model
from ..errors import SvhnJaxError

DATA = "data"


def make_mesh(devices=1) -> jax.sharding.Mesh:
    """A mesh over the first N devices along the axis `data`; devices is N or "all"
    ("all" with several processes, so that every process has devices in it).

    Auto axis types: XLA propagates shardings through the jitted step (the
    autodiff mode relies on it), and shard_map marks the manual regions.
    """
    available = jax.device_count()
    if devices == "all":
        n = available
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):
            n = 0
        if n < 1 or str(devices).strip() != str(n):
            raise SvhnJaxError(f"--devices must be a positive integer or 'all', got {devices!r}")
    if n > available:
        hint = (f"; on CPU, set JAX_NUM_CPU_DEVICES={n} in the environment before JAX starts "
                f"(e.g. JAX_NUM_CPU_DEVICES={n} svhn-jax ...)" if jax.default_backend() == "cpu"
                else "")
        raise SvhnJaxError(f"--devices {n} asks for more devices than JAX sees: "
                           f"{available} {jax.default_backend()} device(s){hint}")
    return jax.make_mesh((n,), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:n])


def size(mesh) -> int:
    """Number of devices along the data axis."""
    return mesh.shape[DATA]


def check_batch(batch: int, mesh) -> int:
    """The global batch, if it splits into equal per-device shares."""
    if batch % size(mesh):
        n = size(mesh)
        raise SvhnJaxError(f"the batch of {batch} does not split evenly over {n} devices; use a "
                           f"multiple of {n} (e.g. --batch {max(n, batch // n * n)}) or other --devices")
    return batch


def replicate(tree, mesh):
    """The same pytree on every device of the mesh (a no-op where it is already).

    Every process must pass the same values. With several processes the mesh
    has devices this one cannot address, which device_put refuses: each leaf
    is then assembled from this process's copy (PRNG keys via their raw data).
    """
    sharding = NamedSharding(mesh, P())
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


def padded_rows(n: int, mesh) -> int:
    """n rounded up to a multiple of the device count (shards must be equal)."""
    return -(-n // size(mesh)) * size(mesh)


def _pad_rows(a, rows):
    a = np.asarray(a)
    return np.concatenate([a, np.zeros((rows - len(a),) + a.shape[1:], a.dtype)]) if rows > len(a) else a


def local_rows(n: int, mesh) -> slice:
    """The rows of the padded training set (n rows, padded to padded_rows) that
    this process's devices hold: all of them in one process; with several, the
    process loads only these (see shard_rows)."""
    rows = padded_rows(n, mesh)
    index = NamedSharding(mesh, P(DATA)).addressable_devices_indices_map((rows,))
    parts = sorted(i[0].indices(rows)[:2] for i in index.values())
    if any(a[1] != b[0] for a, b in zip(parts, parts[1:])):
        raise SvhnJaxError(f"this process's devices hold rows {parts}, not one contiguous range; "
                           f"build the mesh with make_mesh (devices in process order)")
    return slice(parts[0][0], parts[-1][1])


def shard_rows(X, y, mesh, n: int | None = None):
    """The training arrays X (uint8 images (N, 3072), kept uint8; anything else
    becomes float32) and y (int32) split by rows over the mesh.

    n is the size of the whole training set (default len(y)). X and y are
    either the whole set or, with several processes, just this process's rows
    local_rows(n, mesh) (clipped to n), which is all it has to load. The set is
    padded with zero rows to a multiple of the device count; the padding is
    never trained on, because epoch_order draws from range(n) only.
    """
    n = len(y) if n is None else n
    part = local_rows(n, mesh)
    if len(y) == n and len(y) != part.stop - part.start:
        X, y = X[part.start:min(part.stop, n)], y[part.start:min(part.stop, n)]
    rows = padded_rows(n, mesh)
    sharding = NamedSharding(mesh, P(DATA))
    x_dtype = np.uint8 if X.dtype == np.uint8 else np.float32
    local = [_pad_rows(np.asarray(a, dtype), part.stop - part.start)
             for a, dtype in ((X, x_dtype), (y, np.int32))]
    return tuple(jax.make_array_from_process_local_data(sharding, a, (rows,) + a.shape[1:])
                 for a in local)


def loss_and_grads(grad_mode: str, mesh):
    """A function with the signature of model.GRAD_MODES[grad_mode] that takes
    a global batch x (B, D), y (B,) sharded along `data` and replicated params
    and state, and returns the global batch's (loss, grads, new state, logits).
    """
    if grad_mode == "autodiff":
        return model.loss_and_grads_autodiff

    def manual(params, state, x, y, spec, reg=0.0, *, train: bool = True):
        per_device = partial(model.loss_and_grads_manual, spec=spec, train=train, axis_name=DATA)
        return jax.shard_map(lambda p, s, x, y, reg: per_device(p, s, x, y, reg=reg), mesh=mesh,
                             in_specs=(P(), P(), P(DATA), P(DATA), P()),
                             out_specs=(P(), P(), P(), P(DATA)))(params, state, x, y, reg)

    return manual


def get_batch(X, y, order, i, key, step, cfg: train.StepConfig, mesh):
    """train.get_batch, laid out along `data`: each device gets its rows of the batch."""
    batch = train.get_batch(X, y, order, i, key, step, cfg)
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P(DATA)))


def steps(state, hp, X, y, order, start, cfg: train.StepConfig, count: int, mesh):
    """train.steps on the mesh: steps start .. start+count-1 of an epoch.

    The batch is taken from the global order exactly as on one device, then
    laid out along `data`, so every device trains on its share of it.
    """
    grads_fn = loss_and_grads(cfg.grad_mode, mesh)

    def body(state, i):
        xb, yb = get_batch(X, y, order, i, state.key, state.step, cfg, mesh)
        if cfg.check_every:   # the check differentiates the global-batch loss: it proves the sharded step
            return train.checked_step(state, hp, xb, yb, i, cfg, loss_and_grads=grads_fn)
        return train.train_step(state, hp, xb, yb, cfg, loss_and_grads=grads_fn)

    state, outs = jax.lax.scan(body, state, start + jnp.arange(count))
    return state, outs + train.final_grads(state, hp, X, y, order, start + count - 1, cfg, grads_fn)


_run_steps = jax.jit(steps, static_argnames=("cfg", "count", "mesh"), donate_argnums=(0,))


def run_steps(state, hp, X, y, order, start, cfg: train.StepConfig, count: int, mesh):
    """train.run_steps on a mesh: X, y from shard_rows; state, hp and order are
    replicated here if they are not already. The state's buffers are donated:
    use the returned state, which stays replicated on the mesh."""
    check_batch(cfg.batch, mesh)
    state, hp, order = replicate((state, hp, order), mesh)
    return _run_steps(state, hp, X, y, order, start, cfg, count, mesh)


# ------------------------------------------------------------ several processes

ENV = ("SVHN_JAX_COORDINATOR", "SVHN_JAX_NUM_PROCESSES", "SVHN_JAX_PROCESS_ID")


def process_settings(coordinator=None, num_processes=None, process_id=None, environ=None):
    """(coordinator "HOST:PORT", num_processes, process_id) from the arguments or,
    where they are None, the environment variables in ENV; None when neither
    names any of them (a single process)."""
    environ = os.environ if environ is None else environ
    given = [v if v is not None else environ.get(k) for v, k in
             zip((coordinator, num_processes, process_id), ENV)]
    if all(v is None for v in given):
        return None
    flags = ("--coordinator", "--num-processes", "--process-id")
    missing = [f"{f} (or {k})" for v, f, k in zip(given, flags, ENV) if v is None]
    if missing:
        raise SvhnJaxError(f"several processes need all three settings; missing {', '.join(missing)}")
    coordinator, num, pid = given
    if not re.fullmatch(r"[^\s:]+:\d+", str(coordinator)):
        raise SvhnJaxError(f"--coordinator must be HOST:PORT (process 0's address, e.g. "
                           f"10.0.0.1:1234), got {coordinator!r}")
    try:
        num, pid = int(num), int(pid)
    except (TypeError, ValueError):
        raise SvhnJaxError(f"--num-processes and --process-id must be integers, got "
                           f"{num!r} and {pid!r}") from None
    if num < 1 or not 0 <= pid < num:
        raise SvhnJaxError(f"--process-id must be in [0, {num - 1}] with --num-processes {num}, "
                           f"got {pid}")
    return str(coordinator), num, pid


def initialize(coordinator=None, num_processes=None, process_id=None, *, timeout_s: int = 300) -> bool:
    """jax.distributed.initialize from process_settings; False (nothing done) for
    a single process. Must run before JAX computes anything. Every process
    then sees all devices (jax.devices()) and computes on its own; make_mesh
    ("all") spans them, and process 0 (is_main_process) writes the outputs."""
    settings = process_settings(coordinator, num_processes, process_id)
    if settings is None:
        return False
    try:
        jax.distributed.initialize(*settings, initialization_timeout=timeout_s)
    except RuntimeError as e:
        raise SvhnJaxError(f"could not join the processes at {settings[0]} as process "
                           f"{settings[2]} of {settings[1]}: {e}") from None
    return True


def is_main_process() -> bool:
    """Process 0 alone writes run folders, checkpoints and plots."""
    return jax.process_index() == 0


def _allgather(a: np.ndarray) -> np.ndarray:
    """(process_count, *a.shape): every process's `a`, of the same shape and dtype.
    Sent as bytes: JAX would narrow 64-bit values (fingerprints, float64 sums) to 32."""
    from jax.experimental import multihost_utils

    a = np.ascontiguousarray(a)
    raw = multihost_utils.process_allgather(a.reshape(-1).view(np.uint8))
    return np.ascontiguousarray(raw).view(a.dtype).reshape((-1,) + a.shape)


def sum_over_processes(a: np.ndarray) -> np.ndarray:
    """The sum of a host array over every process (each passes its own, same shape)."""
    return np.sum(_allgather(np.asarray(a)), axis=0)


def gather_rows(local: np.ndarray, n: int, mesh) -> np.ndarray:
    """Per-row values of the whole training set from each process's rows (local_rows
    of it, clipped to n): every process gets all n, in row order."""
    part = local_rows(n, mesh)
    mine = _pad_rows(local, part.stop - part.start)   # every process: the same length
    return _allgather(mine).reshape((-1,) + mine.shape[1:])[:n]

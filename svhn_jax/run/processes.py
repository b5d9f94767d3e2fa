"""Several processes, one run (jax.distributed): joining them, and what one process
holds summed or joined over all of them.

    process_settings     (coordinator, number of processes, process id) from flags or env
    initialize           join the processes; False for a single process
    is_main_process      process 0 alone writes run folders, checkpoints and plots
    sum_over_processes   a host array summed over every process
    gather_rows          per-row values of the whole training set from each process's rows

Every process runs the same program on one mesh over all their devices (step.mesh):
each loads only its devices' training rows (mesh.local_rows), and every replicated
result (state, metrics) is readable in every process.
"""

from __future__ import annotations

import atexit
import os
import re

import jax
import numpy as np

from ..errors import SvhnJaxError
from ..step import mesh as meshes
from . import agree

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


def initialize(coordinator=None, num_processes=None, process_id=None, *,
               timeout_s: float = 60) -> bool:
    """jax.distributed.initialize from process_settings; False (nothing done) for
    a single process. Must run before JAX computes anything. Every process then
    sees all devices (jax.devices()) and computes on its own; the mesh spans them,
    and process 0 (is_main_process) writes the outputs.

    timeout_s bounds every wait on another process: joining (a coordinator that
    cannot be reached, a process that never starts), each agreement round, and the
    silence after which a peer counts as lost (timeout_s / 2, see run.agree). JAX's
    own heartbeat timeout is set well beyond it, so that the run's message comes first.
    """
    settings = process_settings(coordinator, num_processes, process_id)
    if settings is None:
        return False
    if not timeout_s > 0:
        raise SvhnJaxError(f"--process-timeout must be a number of seconds > 0, got {timeout_s}")
    try:
        jax.distributed.initialize(*settings, initialization_timeout=max(1, int(timeout_s)),
                                   heartbeat_timeout_seconds=int(2 * timeout_s) + 30,
                                   shutdown_timeout_seconds=max(1, int(timeout_s)))
    except Exception as e:   # RuntimeError or JaxRuntimeError, by jax version
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise SvhnJaxError(f"could not join the processes at {settings[0]} as process "
                           f"{settings[2]} of {settings[1]} within {timeout_s:g} s ({reason}); "
                           f"start process 0 first with --coordinator at its address, and give "
                           f"each process its own --process-id") from None
    agree.configure(timeout_s)
    agree.start_watchdog()
    atexit.register(agree.finish)
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


def gather_rows(local: np.ndarray, n: int, place: meshes.Placement) -> np.ndarray:
    """Per-row values of the whole training set from each process's rows (local_rows
    of it, clipped to n): every process gets all n, in row order."""
    part = meshes.local_rows(n, place)
    mine = meshes.pad_rows(local, part.stop - part.start)   # every process: the same length
    return _allgather(mine).reshape((-1,) + mine.shape[1:])[:n]

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
import sys
import threading

import jax
import numpy as np

from ..errors import EXIT_USAGE, SvhnJaxError
from ..flags import process_settings
from ..step import mesh as meshes
from . import agree

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
    def failed(reason):
        return (f"could not join the processes at {settings[0]} as process {settings[2]} of "
                f"{settings[1]} within {timeout_s:g} s ({reason}); start process 0 first with "
                f"--coordinator at its address, and give each process its own --process-id")

    # JAX's own join timeout aborts the process (a fatal log, no exception) where a
    # peer never registers; this deadline ends it first, with the message
    deadline = threading.Timer(timeout_s, _give_up, args=(failed("no answer from every process"),))
    deadline.daemon = True
    deadline.start()
    try:
        jax.distributed.initialize(*settings, initialization_timeout=int(timeout_s) + 30,
                                   heartbeat_timeout_seconds=int(2 * timeout_s) + 30,
                                   shutdown_timeout_seconds=max(1, int(timeout_s)))
    except Exception as e:   # RuntimeError or JaxRuntimeError, by jax version
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise SvhnJaxError(failed(reason)) from None
    finally:
        deadline.cancel()
    agree.configure(timeout_s)
    agree.start_watchdog()
    atexit.register(agree.finish)
    return True


def _give_up(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_USAGE)


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

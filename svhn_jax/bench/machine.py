"""The machine around a measurement: its peak float32 matrix-multiply rate, its
memory bandwidth and the CPU load of other processes while a measurement runs.

    peak_gflops(n, repeats)        float32 matmul GFLOP/s with jitted JAX (the peak
                                   the bench reports); numpy_peak_gflops likewise.
    bandwidth_gbs(nbytes, repeats) GB/s of a streaming triad with jitted JAX over a
                                   working set of nbytes (the bench's memory roofline).
    load_start() / load_stop(tok)  CPU used by OTHER processes during a measurement,
    measure_load()                 from /proc/stat; a context manager around the pair;
    combine_loads(loads)           several windows' loads as one.

Timing belongs to benchmarks, never to pass/fail tests; see GUIDE.md section 5 for
the pitfalls on 2-core machines (another busy process halves XLA's speed and can
slow small BLAS calls 5-30x: record the load with `measure_load`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import NamedTuple

import numpy as np

#: A measurement is flagged `busy` when other processes used more than this many
#: cores on average. A quarter core is well above the background noise of an idle
#: machine (a few hundredths of a core, plus +-0.01 s of jiffy rounding per
#: reading) and well below one busy process (1.0), which on these 2-core machines
#: already halves XLA's speed.
BUSY_THRESHOLD_CORES = 0.25


# --------------------------------------------------------------------------- peak

def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, page faults, thread-pool start)
    best = math.inf
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_gflops(n: int = 2048, repeats: int = 5, dtype=np.float32) -> float:
    """Measured matmul GFLOP/s of jitted JAX `a @ b` on (n, n) matrices.

    2 n^3 flops per product; the best of `repeats` timed runs after one warm-up
    run, each ended by `block_until_ready`. This is the number the bench
    reports as the machine's peak (README, "Measured numbers"; another busy
    process roughly halves it).
    """
    import jax

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), dtype)
    b = jax.random.normal(k2, (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = _best_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
    return 2.0 * n**3 / seconds / 1e9


def numpy_peak_gflops(n: int = 2048, repeats: int = 5, dtype=np.float32) -> float:
    """Measured matmul GFLOP/s of NumPy `a @ b` (its BLAS), for information.

    Same protocol as `peak_gflops`: 2 n^3 flops, best of `repeats` after a warm-up.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype, copy=False)
    b = rng.standard_normal((n, n), dtype=np.float32).astype(dtype, copy=False)
    out = np.empty((n, n), dtype)
    seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e9


def bandwidth_gbs(nbytes: float, repeats: int = 5, moved: float = 256e6) -> float:
    """Measured memory bandwidth, GB/s, of jitted JAX over a working set of `nbytes`.

    The STREAM triad a <- b + 0.5 a on two float32 arrays of nbytes / 2 each,
    repeated k times inside one compiled `lax.fori_loop` (k chosen so a call
    moves about `moved` bytes: a call's dispatch then costs nothing measurable).
    Each repetition reads a and b and writes a: 1.5 * nbytes. The best of
    `repeats` timed calls after one warm-up call, each ended by
    `block_until_ready`. The working set decides which memory answers: a few MB
    stay in the caches, hundreds of MB stream from DRAM; so the bench measures it
    at the size of the bytes it compares it with.
    """
    import jax
    import jax.numpy as jnp

    n = max(1024, int(nbytes) // 8)
    k = max(2, math.ceil(moved / (12 * n)))
    triad = jax.jit(lambda a, b: jax.lax.fori_loop(0, k, lambda i, a: b + np.float32(0.5) * a, a))
    a, b = jnp.ones(n, jnp.float32), jnp.full(n, 0.25, jnp.float32)
    seconds = _best_seconds(lambda: triad(a, b).block_until_ready(), repeats)
    return 12.0 * n * k / seconds / 1e9


# --------------------------------------------------------------------------- load

_PROC_STAT = "/proc/stat"


class LoadToken(NamedTuple):
    wall: float            # time.perf_counter()
    machine_busy: float | None  # busy CPU seconds of the whole machine, None without /proc/stat
    own_cpu: float         # this process's CPU seconds (all threads + waited-for children)
    steal: float | None    # CPU seconds stolen by the hypervisor


def _read_proc_stat(path: str = _PROC_STAT):
    """(busy_seconds, steal_seconds) summed over all CPUs, or (None, None).

    The first line of /proc/stat is `cpu user nice system idle iowait irq softirq
    steal guest guest_nice` in clock ticks. Busy = user + nice + system + irq +
    softirq + steal; idle and iowait are not busy; guest and guest_nice are
    already counted inside user and nice, so they are not added again. Steal
    (time the hypervisor ran someone else while this VM wanted the CPU) counts as
    busy: it is contention just like another process.
    """
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None, None
    if not fields or fields[0] != "cpu":
        return None, None
    ticks = [int(v) for v in fields[1:]] + [0] * 10
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        hz = 100
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, steal / hz


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cores() -> int:
    return os.cpu_count() or 1


def load_start(path: str = _PROC_STAT) -> LoadToken:
    """Read the counters at the start of a measurement; pass the token to `load_stop`."""
    busy, steal = _read_proc_stat(path)
    return LoadToken(time.perf_counter(), busy, _own_cpu_seconds(), steal)


def load_stop(token: LoadToken, path: str = _PROC_STAT) -> dict:
    """CPU use of OTHER processes since `load_start`.

    Returns {"other_busy_cores", "cores", "wall_s", "busy", "steal_cores"}:

    - other_busy_cores = (machine busy CPU seconds - this process's CPU seconds)
      / wall seconds, clamped at 0: the average number of cores other processes
      (and the kernel on their behalf, and the hypervisor's steal) kept busy.
      This process's CPU time counts all its threads (XLA's, OpenBLAS's,
      PyTorch's pools) and its waited-for children (os.times()).
    - cores: os.cpu_count() (all of the machine's CPUs, which /proc/stat sums).
    - wall_s: elapsed wall seconds.
    - busy: other_busy_cores > BUSY_THRESHOLD_CORES (0.25).
    - steal_cores: the hypervisor-steal part of other_busy_cores.

    /proc/stat counts in clock ticks (usually 10 ms), so over less than about a
    second the figure is coarse. Where /proc/stat does not exist (not Linux) or
    cannot be parsed, other_busy_cores, busy and steal_cores are None.
    """
    wall = time.perf_counter() - token.wall
    busy, steal = _read_proc_stat(path)
    own = _own_cpu_seconds() - token.own_cpu
    result = {"other_busy_cores": None, "cores": _cores(), "wall_s": wall,
              "busy": None, "steal_cores": None}
    if busy is None or token.machine_busy is None or wall <= 0:
        return result
    other = max(0.0, (busy - token.machine_busy - own) / wall)
    result["other_busy_cores"] = other
    result["busy"] = other > BUSY_THRESHOLD_CORES
    result["steal_cores"] = max(0.0, (steal - token.steal) / wall)
    return result


def combine_loads(loads: list[dict]) -> dict:
    """load_stop results of several windows (a mode's interleaved epochs) as one:
    other_busy_cores and steal_cores averaged over the windows weighted by their wall
    seconds, busy judged on that average; None where any window has None."""
    wall = sum(ld["wall_s"] for ld in loads)
    result = {"other_busy_cores": None, "cores": _cores(), "wall_s": wall, "busy": None, "steal_cores": None}
    if not loads or wall <= 0 or any(ld["other_busy_cores"] is None for ld in loads):
        return result
    for key in ("other_busy_cores", "steal_cores"):
        result[key] = sum(ld[key] * ld["wall_s"] for ld in loads) / wall
    result["busy"] = result["other_busy_cores"] > BUSY_THRESHOLD_CORES
    return result


@contextlib.contextmanager
def measure_load(path: str = _PROC_STAT):
    """`with measure_load() as load: ...` fills the dict `load` (see load_stop) on exit."""
    result: dict = {}
    token = load_start(path)
    try:
        yield result
    finally:
        result.update(load_stop(token, path))

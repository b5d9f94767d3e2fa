"""Reference points for `svhn-jax bench`: machine peak, machine load, NumPy and PyTorch.

The bench compares jitted JAX training modes against hand-written references of
the SAME network and optimizer, all float32:

    FC(D->H) - ReLU - FC(H->10)
    loss = mean_n softmax-cross-entropy(z_n, y_n) + 0.5 * reg * (sum W1**2 + sum W2**2)
           (biases are not regularised)
    Adam (Kingma & Ba 2015), g = dloss/dp, t = 1, 2, ...:
        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
        p <- p - lr * m^ / (sqrt(v^) + eps),  m^ = m/(1-b1^t), v^ = v/(1-b2^t)
        b1=0.9, b2=0.999, eps=1e-8
    He-normal init: W ~ N(0, 2/fan_in) drawn with NumPy from `seed`, zero biases
    (`init_params`); the PyTorch reference copies the very same arrays.
    One epoch = the data in a shuffled order (a fresh NumPy permutation per
    epoch from `seed`), cut into len(X) // batch full batches; the tail of
    len(X) % batch images is DROPPED (73,257 images leave 41 over at batch 64
    or 512), so every step has the same shape.

Contents:

    peak_gflops(n, repeats)        float32 matmul GFLOP/s with jitted JAX (the peak
                                   the bench reports); numpy_peak_gflops likewise.
    load_start() / load_stop(tok)  CPU used by OTHER processes during a measurement,
    measure_load()                 from /proc/stat; a context manager around the pair.
    numpy_epoch_fn(hidden, batch)  -> epoch(X, y) -> (seconds, mean_loss), NumPy by hand.
    torch_epoch_fn(hidden, batch)  -> the same in eager PyTorch, or None without torch.
    flops_per_epoch(n, D, H)       the FLOP model behind the "floor at peak".

An epoch callable keeps its parameters and Adam state between calls: calling it
again trains one more epoch. `seconds` is wall time (time.perf_counter) of the
whole epoch loop including the per-batch gather X[perm[i:i+batch]] (the honest
cost of shuffled batches), but not the one-off conversion of X to float32 or to
a torch tensor. `mean_loss` is the mean over the epoch's steps of each step's
loss (including the L2 term) evaluated before that step's update.

Timing belongs to benchmarks, never to pass/fail tests; see GUIDE.md section 5 for
the pitfalls on 2-core machines (another busy process halves XLA's speed and can
slow small BLAS calls 5-30x: record the load with `measure_load`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "ADAM_B1", "ADAM_B2", "ADAM_EPS", "BUSY_THRESHOLD_CORES",
    "peak_gflops", "numpy_peak_gflops",
    "load_start", "load_stop", "measure_load",
    "init_params", "NumpyMLP", "numpy_epoch_fn", "torch_epoch_fn",
    "flops_per_epoch",
]

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
DEFAULT_LR = 1e-3
DEFAULT_REG = 1e-4
CLASSES = 10

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
    reports as the machine's peak (about 174 GFLOP/s at n=2048 on a quiet 2-core
    machine here; another busy process roughly halves it).
    """
    import jax
    import jax.numpy as jnp

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


@contextlib.contextmanager
def measure_load(path: str = _PROC_STAT):
    """`with measure_load() as load: ...` fills the dict `load` (see load_stop) on exit."""
    result: dict = {}
    token = load_start(path)
    try:
        yield result
    finally:
        result.update(load_stop(token, path))


# --------------------------------------------------------------------------- numpy

def init_params(in_dim: int, hidden: int, classes: int = CLASSES, seed: int = 0,
                dtype=np.float32) -> dict:
    """He-normal W1 (D, H) ~ N(0, 2/D), W2 (H, K) ~ N(0, 2/H); zero b1 (H,), b2 (K,).

    Drawn from np.random.default_rng(seed) in float64, then cast to `dtype`, so the
    float32 and float64 parameters are the same numbers up to rounding.
    """
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((in_dim, hidden)) * math.sqrt(2.0 / in_dim)
    W2 = rng.standard_normal((hidden, classes)) * math.sqrt(2.0 / hidden)
    return {"W1": W1.astype(dtype), "b1": np.zeros(hidden, dtype),
            "W2": W2.astype(dtype), "b2": np.zeros(classes, dtype)}


def _shuffle_rng(seed: int) -> np.random.Generator:
    # A stream separate from init's, the same for the NumPy and PyTorch references.
    return np.random.default_rng([seed, 1])


class NumpyMLP:
    """The reference network with a hand-written backward pass and Adam, in NumPy.

    Everything stays in `dtype` (float32 by default): Python-float scalars do not
    upcast float32 arrays under NumPy 2's promotion rules, and the one-hot
    subtraction, reductions and Adam updates are done in place on `dtype` arrays.

    Attributes: params (dict W1, b1, W2, b2), m, v (Adam slots, same keys), t
    (updates done). `step(x, y)` does one Adam step and returns the loss before it;
    `loss_and_grads(x, y)` is the pure part; calling the object trains one epoch.
    """

    def __init__(self, hidden: int, batch: int, in_dim: int = 3072, seed: int = 0, *,
                 lr: float = DEFAULT_LR, reg: float = DEFAULT_REG, classes: int = CLASSES,
                 dtype=np.float32):
        self.hidden, self.batch, self.in_dim = int(hidden), int(batch), int(in_dim)
        self.lr, self.reg, self.dtype = float(lr), float(reg), np.dtype(dtype)
        self.params = init_params(in_dim, hidden, classes, seed, self.dtype)
        self.m = {k: np.zeros_like(p) for k, p in self.params.items()}
        self.v = {k: np.zeros_like(p) for k, p in self.params.items()}
        self.t = 0
        self._rng = _shuffle_rng(seed)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray):
        """Loss and gradients for one batch x (B, D), y (B,) int; nothing is updated.

        Forward:  h = x W1 + b1;  a = relu(h);  z = a W2 + b2;  p = softmax(z)
        Backward: dz = (p - onehot(y)) / B
                  dW2 = a^T dz + reg W2;  db2 = sum_n dz
                  dh = (dz W2^T) * [h > 0]
                  dW1 = x^T dh + reg W1;  db1 = sum_n dh
        """
        P, reg = self.params, self.reg
        n = x.shape[0]
        h = x @ P["W1"]
        h += P["b1"]
        a = np.maximum(h, 0)
        z = a @ P["W2"]
        z += P["b2"]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        # log p_y = z_y - log s  (z already shifted by its row max)
        data_loss = -(z[rows, y] - np.log(s[:, 0])).mean()
        w1, w2 = P["W1"].ravel(), P["W2"].ravel()
        loss = data_loss + 0.5 * reg * (w1 @ w1 + w2 @ w2)

        dz = e
        dz /= s
        dz[rows, y] -= 1
        dz *= 1.0 / n
        g = {}
        g["W2"] = a.T @ dz
        g["W2"] += reg * P["W2"]
        g["b2"] = dz.sum(axis=0)
        dh = dz @ P["W2"].T
        dh *= h > 0
        g["W1"] = x.T @ dh
        g["W1"] += reg * P["W1"]
        g["b1"] = dh.sum(axis=0)
        return loss, g

    def step(self, x: np.ndarray, y: np.ndarray):
        """One Adam step on the batch; returns the loss before the update."""
        loss, grads = self.loss_and_grads(x, y)
        self.t += 1
        t, lr = self.t, self.lr
        bc1 = 1.0 - ADAM_B1**t
        bc2 = 1.0 - ADAM_B2**t
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            m *= ADAM_B1
            m += (1.0 - ADAM_B1) * g
            v *= ADAM_B2
            g *= g
            g *= 1.0 - ADAM_B2
            v += g
            # p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
            denom = v * (1.0 / bc2)
            np.sqrt(denom, out=denom)
            denom += ADAM_EPS
            upd = m * (lr / bc1)
            upd /= denom
            p -= upd
        return loss

    def __call__(self, X: np.ndarray, y: np.ndarray):
        """Train one epoch over X (N, D), y (N,) in shuffled full batches; the tail
        of N % batch images is dropped. Returns (seconds, mean_loss)."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        y = np.asarray(y, dtype=np.intp)
        _check_data(X, y, self.in_dim, self.batch)
        perm = self._rng.permutation(len(X))
        b = self.batch
        steps = len(X) // b
        total = 0.0
        t0 = time.perf_counter()
        for i in range(steps):
            idx = perm[i * b:(i + 1) * b]
            total += float(self.step(X[idx], y[idx]))
        return time.perf_counter() - t0, total / steps


def _check_data(X, y, in_dim, batch):
    if X.ndim != 2 or X.shape[1] != in_dim:
        raise ValueError(f"X must be (N, {in_dim}), got {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must be ({X.shape[0]},), got {y.shape}")
    if X.shape[0] < batch:
        raise ValueError(f"need at least one full batch of {batch}, got {X.shape[0]} images")


def numpy_epoch_fn(hidden: int, batch: int, in_dim: int = 3072, seed: int = 0, *,
                   lr: float = DEFAULT_LR, reg: float = DEFAULT_REG) -> Callable:
    """A NumPy-by-hand epoch: callable(X float32 (N, D), y int (N,)) -> (seconds, mean_loss).

    Forward, hand-derived backward and Adam as in the module docstring, float32
    throughout. Each call trains one more epoch (state persists) over a fresh
    shuffled order in len(X) // batch full batches, DROPPING the tail of
    len(X) % batch images. The returned object is a `NumpyMLP` (its `.params`,
    `.m`, `.v`, `.t` can be inspected).
    """
    return NumpyMLP(hidden, batch, in_dim, seed, lr=lr, reg=reg)


# --------------------------------------------------------------------------- torch

class TorchMLP:
    """The same network and Adam in eager PyTorch (float32), for `torch_epoch_fn`.

    Parameters start as copies of `init_params(in_dim, hidden, seed=seed)`, laid out
    like the NumPy reference (h = x @ W1 + b1 with W1 (D, H)). The loss is
    F.cross_entropy (mean) + 0.5 * reg * (sum W1^2 + sum W2^2) and the optimizer
    torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0), whose update
    lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) is the Kingma & Ba rule above. Shuffling
    uses the same NumPy permutations as NumpyMLP with the same seed.
    """

    def __init__(self, torch, hidden: int, batch: int, in_dim: int = 3072, seed: int = 0, *,
                 lr: float = DEFAULT_LR, reg: float = DEFAULT_REG, classes: int = CLASSES):
        self.torch = torch
        self.hidden, self.batch, self.in_dim = int(hidden), int(batch), int(in_dim)
        self.reg = float(reg)
        init = init_params(in_dim, hidden, classes, seed, np.float32)
        self.params = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True)
                       for k, v in init.items()}
        self.opt = torch.optim.Adam(list(self.params.values()), lr=float(lr),
                                    betas=(ADAM_B1, ADAM_B2), eps=ADAM_EPS, weight_decay=0)
        self._rng = _shuffle_rng(seed)

    def loss(self, x, y):
        torch, P = self.torch, self.params
        a = torch.relu(torch.addmm(P["b1"], x, P["W1"]))
        z = torch.addmm(P["b2"], a, P["W2"])
        l2 = P["W1"].square().sum() + P["W2"].square().sum()
        return torch.nn.functional.cross_entropy(z, y) + (0.5 * self.reg) * l2

    def step(self, x, y):
        """One Adam step on torch tensors x (B, D) float32, y (B,) int64; returns the loss."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(x, y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def numpy_params(self) -> dict:
        return {k: p.detach().numpy().copy() for k, p in self.params.items()}

    def __call__(self, X, y):
        """Train one epoch (tail of N % batch dropped); returns (seconds, mean_loss)."""
        torch = self.torch
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        _check_data(X, y, self.in_dim, self.batch)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        perm = torch.from_numpy(self._rng.permutation(len(X)).astype(np.int64))
        b = self.batch
        steps = len(X) // b
        total = torch.zeros((), dtype=torch.float64)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = perm[i * b:(i + 1) * b]
            total += self.step(Xt.index_select(0, idx), yt.index_select(0, idx))
        seconds = time.perf_counter() - t0
        return seconds, float(total) / steps


def torch_epoch_fn(hidden: int, batch: int, in_dim: int = 3072, seed: int = 0, *,
                   lr: float = DEFAULT_LR, reg: float = DEFAULT_REG) -> Callable | None:
    """The same epoch in eager PyTorch, or None when torch cannot be imported.

    callable(X float32 (N, D), y int (N,)) -> (seconds, mean_loss), with the same
    init (copied from `init_params`), the same shuffled order and the same dropped
    tail as `numpy_epoch_fn`; float32; torch.set_num_threads(os.cpu_count()) is
    called (a process-wide setting). Install with the `bench` extra; on these
    machines `pip install torch==2.13.0` takes the local CPU wheel.
    """
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return TorchMLP(torch, hidden, batch, in_dim, seed, lr=lr, reg=reg)


# --------------------------------------------------------------------------- flops

def flops_per_epoch(n: int, in_dim: int, hidden: int, classes: int = CLASSES) -> float:
    """FLOPs of one training epoch over n images: 2x the forward matmul FLOPs.

    forward  = 2 n (D H + H K)            (x W1 and a W2; a multiply-add is 2 flops)
    backward = 2 n (D H + H K)  weight gradients x^T dh and a^T dz
             + 2 n H K          input gradient dz W2^T of the second layer
             (the first layer needs no input gradient)
    so an epoch is 2 forward + 2 n H K, and with H K << D H that is about
    2 x forward; this returns exactly 2 x forward = 4 n (D H + H K). Elementwise
    work (bias, ReLU, softmax, Adam) is left out: it is O(n (H + K) + D H), under
    1% here. At D=3072, H=128, n=73,257 the forward is 57.8 GFLOP, the epoch
    115.6 GFLOP: 0.66 s at 174 GFLOP/s. Pass n = images actually processed
    (len(X) // batch * batch when the tail is dropped) for an exact count.
    """
    forward = 2.0 * n * (in_dim * hidden + hidden * classes)
    return 2.0 * forward

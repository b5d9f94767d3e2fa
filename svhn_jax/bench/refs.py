"""Reference implementations for `svhn-jax bench`: the same network and optimizer
by hand in NumPy and in eager PyTorch, and the FLOP model of an epoch.

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

    numpy_epoch_fn(hidden, batch)  -> epoch(X, y) -> (seconds, mean_loss), NumPy by hand.
    torch_epoch_fn(hidden, batch)  -> the same in eager PyTorch, or None without torch.
    flops_per_epoch(n, D, H)       the FLOP model behind the "floor at peak".

An epoch callable keeps its parameters and Adam state between calls: calling it
again trains one more epoch. `seconds` is wall time (time.perf_counter) of the
whole epoch loop including the per-batch gather X[perm[i:i+batch]] (the honest
cost of shuffled batches), but not the one-off conversion of X to float32 or to
a torch tensor. `mean_loss` is the mean over the epoch's steps of each step's
loss (including the L2 term) evaluated before that step's update.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
DEFAULT_LR = 1e-3
DEFAULT_REG = 1e-4
CLASSES = 10



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
    1% here. (At D=3072, H=128, n=73,257: a 57.8 GFLOP forward, a 115.6 GFLOP
    epoch: arithmetic, not a measurement.) Pass n = images actually processed
    (len(X) // batch * batch when the tail is dropped) for an exact count.
    """
    forward = 2.0 * n * (in_dim * hidden + hidden * classes)
    return 2.0 * forward

"""Correctness of the bench references (no timing assertions: timing is for benchmarks)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax.bench import machine, refs

D, H, K, B = 12, 8, 10, 4
LR, REG = 1e-2, 1e-3


def _jax_loss(params, x, y, reg):
    """The reference loss written independently with jax.nn: CE mean + 0.5 reg sum W^2."""
    h = jax.nn.relu(x @ params["W1"] + params["b1"])
    z = h @ params["W2"] + params["b2"]
    logp = jax.nn.log_softmax(z, axis=1)
    ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    return ce + 0.5 * reg * (jnp.sum(params["W1"] ** 2) + jnp.sum(params["W2"] ** 2))


def _adam_np(params, grads, m, v, t, lr):
    """Textbook Adam (Kingma & Ba) on float64 NumPy arrays; returns new (params, m, v)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    new_p, new_m, new_v = {}, {}, {}
    for k in params:
        new_m[k] = b1 * m[k] + (1 - b1) * grads[k]
        new_v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
        mhat = new_m[k] / (1 - b1**t)
        vhat = new_v[k] / (1 - b2**t)
        new_p[k] = params[k] - lr * mhat / (np.sqrt(vhat) + eps)
    return new_p, new_m, new_v


def _tiny_data(n=16, seed=3, separable=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    X = rng.standard_normal((n, D))
    if separable:
        X[np.arange(n), y] += 4.0  # class k lights up feature k
    return X.astype(np.float32), y


def _reference_trajectory(x_batches, y_batches, seed, steps):
    """Losses and params of `steps` Adam steps with jax.grad in float64."""
    params = {k: np.asarray(v, np.float64) for k, v in refs.init_params(D, H, K, seed, np.float64).items()}
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    losses = []
    with jax.enable_x64(True):
        vg = jax.value_and_grad(_jax_loss)
        for t in range(1, steps + 1):
            x = jnp.asarray(x_batches[t - 1], jnp.float64)
            y = jnp.asarray(y_batches[t - 1])
            loss, g = vg({k: jnp.asarray(p) for k, p in params.items()}, x, y, REG)
            losses.append(float(loss))
            params, m, v = _adam_np(params, {k: np.asarray(gk) for k, gk in g.items()}, m, v, t, LR)
    return losses, params


@pytest.mark.parametrize("dtype, rtol, atol", [
    (np.float64, 1e-10, 1e-12),
    # float32: each step's loss/gradient carries ~1e-7 relative rounding; after 5
    # Adam steps of lr 1e-2 the params agree to ~1e-6, so 1e-4/1e-5 leaves room.
    (np.float32, 1e-4, 1e-5),
])
def test_numpy_reference_matches_jax_grad_and_textbook_adam(dtype, rtol, atol):
    X, y = _tiny_data()
    steps = 5
    rng = np.random.default_rng(7)
    idx = [rng.choice(len(X), B, replace=False) for _ in range(steps)]
    xb = [X[i].astype(np.float64) for i in idx]
    yb = [y[i] for i in idx]
    ref_losses, ref_params = _reference_trajectory(xb, yb, seed=5, steps=steps)

    net = refs.NumpyMLP(H, B, in_dim=D, seed=5, lr=LR, reg=REG, dtype=dtype)
    losses = [float(net.step(x.astype(dtype), yy)) for x, yy in zip(xb, yb)]
    assert net.t == steps
    for p in net.params.values():
        assert p.dtype == dtype
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol, atol=atol)
    for k in ref_params:
        np.testing.assert_allclose(net.params[k], ref_params[k], rtol=rtol, atol=atol, err_msg=k)


def test_numpy_gradients_match_jax_grad_float64():
    X, y = _tiny_data()
    net = refs.NumpyMLP(H, B, in_dim=D, seed=1, reg=REG, dtype=np.float64)
    loss, g = net.loss_and_grads(X[:B].astype(np.float64), y[:B])
    with jax.enable_x64(True):
        ref_loss, ref_g = jax.value_and_grad(_jax_loss)(
            {k: jnp.asarray(p) for k, p in net.params.items()}, jnp.asarray(X[:B], jnp.float64),
            jnp.asarray(y[:B]), REG)
    assert loss == pytest.approx(float(ref_loss), rel=1e-12)
    for k in ref_g:
        np.testing.assert_allclose(g[k], np.asarray(ref_g[k]), rtol=1e-10, atol=1e-13, err_msg=k)


def test_numpy_epoch_stays_float32_and_loss_decreases():
    X, y = _tiny_data(n=64, separable=True)
    epoch = refs.numpy_epoch_fn(H, B, in_dim=D, seed=0, lr=LR)
    losses = []
    for _ in range(5):
        seconds, loss = epoch(X, y)
        assert seconds >= 0 and math.isfinite(loss)
        losses.append(loss)
    assert epoch.t == 5 * (64 // B)
    assert all(p.dtype == np.float32 for p in epoch.params.values())
    assert all(s.dtype == np.float32 for s in list(epoch.m.values()) + list(epoch.v.values()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_numpy_epoch_drops_the_tail_batch():
    X, y = _tiny_data(n=18)  # 4 full batches of 4, 2 images dropped
    epoch = refs.numpy_epoch_fn(H, B, in_dim=D)
    epoch(X, y)
    assert epoch.t == 4


def test_torch_reference_matches_numpy_reference():
    torch = pytest.importorskip("torch")
    X, y = _tiny_data(n=64, separable=True)
    np_epoch = refs.numpy_epoch_fn(H, B, in_dim=D, seed=2, lr=LR, reg=REG)
    t_epoch = refs.torch_epoch_fn(H, B, in_dim=D, seed=2, lr=LR, reg=REG)
    assert t_epoch is not None
    np_losses, t_losses = [], []
    for _ in range(3):
        np_losses.append(np_epoch(X, y)[1])
        t_losses.append(t_epoch(X, y)[1])
    # Same init, same shuffled order, same Adam: identical up to float32 rounding
    # (48 Adam steps; observed agreement ~1e-7).
    np.testing.assert_allclose(t_losses, np_losses, rtol=1e-4)
    assert t_losses[-1] < 0.5 * t_losses[0], t_losses
    tp = t_epoch.numpy_params()
    for k, p in np_epoch.params.items():
        assert tp[k].dtype == np.float32
        np.testing.assert_allclose(tp[k], p, rtol=1e-3, atol=1e-4, err_msg=k)
    assert torch.get_num_threads() >= 1


def test_load_stop_returns_documented_keys():
    token = machine.load_start()
    sum(i * i for i in range(10000))
    out = machine.load_stop(token)
    assert {"other_busy_cores", "cores", "wall_s", "busy"} <= set(out)
    assert out["cores"] >= 1 and out["wall_s"] >= 0
    if out["other_busy_cores"] is not None:
        assert out["other_busy_cores"] >= 0
        assert out["busy"] == (out["other_busy_cores"] > machine.BUSY_THRESHOLD_CORES)
    with machine.measure_load() as load:
        pass
    assert {"other_busy_cores", "cores", "wall_s", "busy"} <= set(load)


def test_load_degrades_without_proc_stat(tmp_path):
    missing = str(tmp_path / "no_such_stat")
    out = machine.load_stop(machine.load_start(missing), missing)
    assert out["other_busy_cores"] is None and out["busy"] is None
    assert out["cores"] >= 1 and out["wall_s"] >= 0


def test_load_counts_other_busy_time(tmp_path):
    # A fake /proc/stat whose busy ticks grow by a lot between the two readings.
    hz = 100
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 1000 0 0 0 0 0 0\n")
    token = machine.load_start(str(stat))
    stat.write_text(f"cpu  {100 + 1000 * hz} 0 100 1000 0 0 0 0 0 0\n")
    out = machine.load_stop(token, str(stat))
    assert out["busy"] is True and out["other_busy_cores"] > machine.BUSY_THRESHOLD_CORES


def test_peak_gflops_positive_finite():
    for g in (machine.peak_gflops(n=256, repeats=2), machine.numpy_peak_gflops(n=256, repeats=2)):
        assert math.isfinite(g) and g > 0


def test_flops_per_epoch_matches_guide_anchor():
    # GUIDE section 7: 57.8 GFLOP forward at H=128 for 73,257 images.
    assert refs.flops_per_epoch(73257, 3072, 128) == pytest.approx(2 * 57.8e9, rel=1e-3)
    assert refs.flops_per_epoch(1, 3, 2, classes=5) == 4 * (3 * 2 + 2 * 5)

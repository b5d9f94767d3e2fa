"""The per-step check keeps its teeth where training multiplies at less than float32.

On a CPU, `reduced_precision` makes every product of the Dense layer round its
inputs as a GPU's TensorFloat-32 (10-bit mantissa) or a TPU's bfloat16 passes
(7 bits) do, under jax_default_matmul_precision 'tensorfloat32' / 'bfloat16'.
Training then applies a gradient that is off by that rounding; the check
recomputes it at full float32 and keeps its float32 tolerance (6.1e-5). Correct
code passes every check; each injected bug fails every checked step, in train
mode and in the epoch's eval-mode check. `pytest -rP` prints the table.
(pmean for psum on 2 devices: tests/test_parallel_devices.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reduced_precision
from svhn_jax.step import evaluate, train
from svhn_jax.nn import model, schedules, stepcheck
from svhn_jax.nn.precision import BF16_ROUNDOFF, TF32_ROUNDOFF

N, BATCH, IN_DIM = 128, 16, 256
STEPS = N // BATCH
TOL = stepcheck.tolerance()
PRECISIONS = {"tensorfloat32": TF32_ROUNDOFF, "bfloat16": BF16_ROUNDOFF}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, N).astype(np.int32)
    X = rng.normal(size=(10, IN_DIM))[y] + 2.0 * rng.normal(size=(N, IN_DIM))
    X = ((X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y), evaluate.make_eval_set(X, y)


def _last_bias_off_by_one_percent(backward):
    def broken(params, cache, dy):
        g, dx = backward(params, cache, dy)
        return (dict(g, b=1.01 * g["b"]) if g["b"].shape == (10,) else g), dx
    return broken


def _one_first_layer_entry_zeroed(backward):
    def broken(params, cache, dy):
        g, dx = backward(params, cache, dy)
        return (dict(g, W=g["W"].at[3, 5].set(0.0)) if g["W"].shape[0] == IN_DIM else g), dx
    return broken


# the smallest errors: a gross one (a leaf scaled 2x) fails wherever these do, and
# each costs a compilation of the checked epoch
BUGS = {"none (correct code)": None, "1% error in the last bias": _last_bias_off_by_one_percent,
        "one zeroed first-layer entry": _one_first_layer_entry_zeroed}


def checked_epoch(data, precision, monkeypatch, bug=None, grad_mode="manual"):
    """One epoch with a check on every step, then the epoch's eval-mode check,
    all traced under `precision` with the double's Dense layer -> rows."""
    X, y, val = data
    reduced_precision.use(monkeypatch, bug)
    cfg = train.check_config(train.StepConfig(model.make_spec((16,)), "adam",
                                              schedules.ScheduleSpec("cosine", total_steps=50), BATCH, grad_mode,
                                              shift=2, image_shape=(16, 16, 1), check_every=1))
    hp = train.Hyper(lr=jnp.float32(3e-3), reg=jnp.float32(3e-3))
    jax.clear_caches()   # compiled with another layer or precision before
    try:
        with jax.default_matmul_precision(precision):
            state = train.init_state(0, cfg, IN_DIM, hp)
            state, out = train.run_steps(state, hp, X, y, train.epoch_order(state.key, 0, N, BATCH), 0, cfg, STEPS)
            rows = stepcheck.records(out[2], 1)
            check_eval = jax.jit(train.check_eval, static_argnames="cfg")
            rows += stepcheck.records(check_eval(state, hp, val, cfg), 1, mode="eval")
    finally:
        jax.clear_caches()
    return state, rows


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_each_bug_fails_every_checked_step_and_correct_code_none(data, monkeypatch, precision):
    table = []
    for name, bug in BUGS.items():
        _, rows = checked_epoch(data, precision, monkeypatch, bug)
        monkeypatch.undo()
        assert len(rows) == STEPS + 1 and rows[-1]["mode"] == "eval"
        failed = sum(not r["passed"] for r in rows)
        errors = [max(r["manual_vs_autodiff"], r["directional_jvp"]) for r in rows]
        table.append(f"  {name:<32} {failed:>3}/{len(rows)} checks failed; hand vs jax.grad or jvp from "
                     f"{min(errors):.1e} to {max(errors):.1e}")
        if bug is None:
            assert failed == 0 and max(errors) < TOL / 8, rows
            off = [r["training_precision_error"] for r in rows]
            # the double did round: the applied gradient is off by more than the
            # check's tolerance, which it would fail if the check compared it
            assert np.median(off) > TOL
            assert np.median(off) <= rows[0]["training_precision_bound"]
            assert rows[0]["training_precision_bound"] == pytest.approx(stepcheck.training_precision_bound(
                model.make_spec((16,)), BATCH, PRECISIONS[precision]), rel=1e-7)   # stored as float32
        else:
            assert failed == len(rows), (name, rows)
    print(f"\nsimulated {precision} products (u = {PRECISIONS[precision]:.1e}); the check's tolerance "
          f"{TOL:.1e}:\n" + "\n".join(table))


def test_autodiff_mode_still_compares_with_the_hand_gradient(data, monkeypatch):
    """Training with jax.grad: a wrong hand backward, which training never
    applies, must still fail every check, at full and at reduced precision."""
    for precision in ("highest", "tensorfloat32"):
        plain, _ = checked_epoch(data, precision, monkeypatch, None, "autodiff")
        monkeypatch.undo()
        state, rows = checked_epoch(data, precision, monkeypatch, _last_bias_off_by_one_percent, "autodiff")
        monkeypatch.undo()
        assert not any(r["passed"] for r in rows), precision
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # the bug was never applied

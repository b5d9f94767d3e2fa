"""Data parallel on 1, 2, 4 and 8 CPU devices: synchronised BatchNorm, the sharded
hand backward proved, broken reductions caught, the same training on any count.

Needs 8 devices, which JAX creates only at start-up: test_parallel.py runs this
file in a subprocess with JAX_NUM_CPU_DEVICES=8 (or run it so yourself). In a
one-device process it is skipped.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from svhn_jax.run import checkpoint
from svhn_jax import cli
from svhn_jax.step import evaluate, parallel, train
from svhn_jax.step import mesh as meshes
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import distcheck, gradcheck, layers, model

import parallel_cases as cases

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices: tests/test_parallel.py runs this file "
                                   "with JAX_NUM_CPU_DEVICES=8")

TOL = 1e-12          # float64: sharded vs single-device, hand vs jax.grad
TOL_FD = 1e-6        # float64: hand vs central finite differences


def test_placement_shapes_the_mesh_and_refuses_a_batch_that_does_not_split():
    one = meshes.placement(1, "all", batch=16, stacked=False)
    assert (one.models, one.data, one.padded) == (1, 8, 1)
    assert meshes.placement(1, "4", batch=16, stacked=False).mesh.devices.ravel().tolist() == jax.devices()[:4]
    assert meshes.placement(1, "auto", batch=16, stacked=False).mesh is None   # one model: one device
    # K stacked models: the fewest rounds, then the rest of the devices along data
    shapes = {k: meshes.placement(k, "all", batch=16, stacked=True) for k in (2, 3, 5, 8, 9)}
    assert {k: (p.models, p.data, p.padded) for k, p in shapes.items()} == {
        2: (2, 4, 2), 3: (3, 2, 3), 5: (5, 1, 5), 8: (8, 1, 8), 9: (5, 1, 10)}
    assert meshes.check_batch(16, one) == 16
    with pytest.raises(SvhnJaxError, match="does not split evenly over 3 devices"):
        meshes.placement(1, "3", batch=16, stacked=False)
    with pytest.raises(SvhnJaxError, match="JAX_NUM_CPU_DEVICES=9"):
        meshes.placement(1, "9", batch=16, stacked=False)


def test_training_arrays_are_split_by_rows_and_state_is_replicated():
    place = meshes.data_placement(4)
    X = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    Xs, ys = meshes.shard_rows(X, np.arange(30), place)
    assert Xs.shape == (32, 3) and ys.dtype == jnp.int32   # padded to a multiple of 4
    assert [s.data.shape for s in Xs.addressable_shards] == [(8, 3)] * 4
    np.testing.assert_array_equal(np.asarray(Xs)[:30], X)
    rep = meshes.replicate({"W": jnp.ones((3, 2))}, place)["W"]
    assert rep.sharding.is_fully_replicated and len(rep.addressable_shards) == 4


def _numpy_batchnorm(x, gamma, beta, mean, var, momentum=0.9, eps=1e-5):
    """Independent float64 reference: the global batch's statistics."""
    mu, v = x.mean(0), x.var(0)
    y = gamma * (x - mu) / np.sqrt(v + eps) + beta
    return y, momentum * mean + (1 - momentum) * mu, momentum * var + (1 - momentum) * v


def test_synchronised_batchnorm_uses_the_global_batch():
    mesh = meshes.data_placement(8).mesh
    rng = np.random.default_rng(8)
    x, dy = rng.normal(2.0, 3.0, (16, 5)), rng.normal(size=(16, 5))
    p = {"gamma": rng.uniform(0.5, 2.0, 5), "beta": rng.normal(size=5)}
    s = {"mean": rng.normal(size=5), "var": rng.uniform(0.5, 2.0, 5)}

    def per_device(p, s, x, dy):
        y, new_s, cache = layers.batchnorm_forward(p, s, x, train=True, axis_name="data")
        grads, dx = layers.batchnorm_backward(p, cache, dy)
        return y, new_s, jax.lax.psum(grads, "data"), dx

    with gradcheck.float64():
        f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                                  out_specs=(P("data"), P(), P(), P("data"))))
        y, new_s, grads, dx = f(p, s, x, dy)
        ref_y, ref_mean, ref_var = _numpy_batchnorm(x, p["gamma"], p["beta"], s["mean"], s["var"])
        np.testing.assert_allclose(y, ref_y, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(new_s["mean"], ref_mean, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(new_s["var"], ref_var, rtol=TOL, atol=TOL)
        # the hand VJP with its cross-device terms vs jax.grad of the one-device layer
        single = lambda p, x: jnp.vdot(layers.batchnorm_forward(p, s, x, train=True)[0], dy)
        g_p, g_x = jax.grad(single, argnums=(0, 1))(p, jnp.asarray(x))
        assert gradcheck.rel_error(dx, g_x) <= TOL
        assert max(gradcheck.rel_error(grads[k], g_p[k]) for k in p) <= TOL


def test_jax_grad_inside_shard_map_also_gives_the_global_gradient():
    """A third route: autodiff through the psums of the sharded loss."""
    mesh, spec = meshes.data_placement(8).mesh, model.make_spec((5,), batchnorm="after")
    with gradcheck.float64():
        params, state = gradcheck._random_params(np.random.default_rng(0), spec, 6)   # gamma, beta not 1, 0
        x, y = jax.random.normal(jax.random.key(1), (16, 6), jnp.float64), jnp.arange(16) % 10
        per_device = partial(model.loss_and_grads_autodiff, spec=spec, reg=0.1, axis_name="data")
        sharded = jax.jit(jax.shard_map(lambda p, s, x, y: per_device(p, s, x, y)[:3], mesh=mesh,
                                        in_specs=(P(), P(), P("data"), P("data")),
                                        out_specs=(P(), P(), P())))
        got = sharded(params, state, x, y)
        want = model.loss_and_grads_autodiff(params, state, x, y, spec, 0.1)[:3]
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert gradcheck.rel_error(a, b) <= TOL


@pytest.mark.parametrize("n_dev", [1, 2, 4, 8])
def test_sharded_hand_backward_matches_jax_grad_and_finite_differences(n_dev):
    mesh = meshes.data_placement(n_dev).mesh
    checks = [("none", True), ("before", True), ("after", True)] + [("before", False)] * (n_dev == 8)
    for bn, train_mode in checks:
        r = distcheck.check_sharded_model(model.make_spec((5,), batchnorm=bn), mesh, in_dim=6,
                                          batch=16, train=train_mode, seed=n_dev, fd_samples=8)
        assert r["ok"], r["failures"]
        assert r["devices"] == n_dev and f"{n_dev} devices x {16 // n_dev} rows" in r["check"]
        assert r["max_rel_error_manual_vs_autodiff"] <= TOL
        assert r["max_rel_error_manual_vs_finite_diff"] <= TOL_FD
        assert max(r["forward_rel_error"].values()) <= TOL
        # the differences were compared, not set aside (a broken difference is set aside whole)
        assert sum(leaf["fd_set_aside"] for leaf in r["leaves"]) <= 1
        assert all(leaf["fd_entries"] >= min(leaf["size"], 8) - 1 for leaf in r["leaves"])


SPEC_BN = model.make_spec((5,), batchnorm="before")   # leaves 0.dense.W, 1.batchnorm.*, 3.dense.*


def _check_bn(mesh, **kw):
    return distcheck.check_sharded_model(SPEC_BN, mesh, in_dim=6, fd_samples=8, **kw)


def _failed_leaves(report):
    return {f.split(":")[0] for f in report["failures"]}


def test_a_missing_gradient_psum_is_refused_by_jax_and_caught_by_the_check(monkeypatch):
    mesh = meshes.data_placement(4).mesh
    monkeypatch.setattr(model, "allreduce_grads", lambda grads, axis_name: grads)
    # shard_map knows each device's gradient differs, so it will not return it as replicated
    with pytest.raises(ValueError, match="out_specs"):
        _check_bn(mesh)
    # without that static check, the numbers give it away
    r = _check_bn(mesh, check_vma=False)
    assert not r["ok"]
    assert _failed_leaves(r) >= {"0.dense.W", "1.batchnorm.gamma", "3.dense.W"}
    assert r["max_rel_error_manual_vs_autodiff"] > 0.1


def test_a_gradient_averaged_instead_of_summed_is_caught(monkeypatch):
    # pmean divides by the device count a second time (it is already in dlogits)
    monkeypatch.setattr(model, "allreduce_grads", lambda g, axis_name: jax.lax.pmean(g, axis_name))
    r = _check_bn(meshes.data_placement(4).mesh, reg=0.0)
    assert not r["ok"] and _failed_leaves(r) >= {"0.dense.W", "3.dense.W", "3.dense.b"}
    assert r["max_rel_error_manual_vs_autodiff"] == pytest.approx(0.6, abs=1e-9)  # |g/4 - g| / (|g/4| + |g|)


def test_a_missing_psum_in_batchnorm_backward_is_caught(monkeypatch):
    bwd = layers.LAYERS["batchnorm"].backward
    local_backward = lambda p, cache, dy: bwd(p, dict(cache, axis_name=None), dy)
    monkeypatch.setitem(layers.LAYERS, "batchnorm", layers.LAYERS["batchnorm"]._replace(backward=local_backward))
    r = _check_bn(meshes.data_placement(4).mesh)
    assert not r["ok"]
    # dx of BatchNorm is wrong, so only the layer below it is; its own gamma/beta are right
    assert _failed_leaves(r) == {"0.dense.W"}
    assert max(r["forward_rel_error"].values()) <= TOL


def test_local_batchnorm_statistics_are_refused_by_jax_and_caught_by_the_check(monkeypatch):
    fwd = layers.LAYERS["batchnorm"].forward
    local_forward = lambda p, s, x, *, train, axis_name=None, **kw: fwd(p, s, x, train=train, **kw)
    monkeypatch.setitem(layers.LAYERS, "batchnorm", layers.LAYERS["batchnorm"]._replace(forward=local_forward))
    mesh = meshes.data_placement(4).mesh
    # each device's running statistics differ: they cannot be returned as replicated
    with pytest.raises(ValueError, match=r"out_specs\[2\] is P\(\)"):
        _check_bn(mesh)
    r = _check_bn(mesh, check_vma=False)
    assert not r["ok"] and "0.dense.W" in _failed_leaves(r)
    assert any(f.startswith("sharded forward: bn_running_stats") for f in r["failures"])
    assert any(f.startswith("sharded forward: loss") for f in r["failures"])


def test_cli_gradcheck_on_a_mesh(capsys):
    args = ["gradcheck", "--hidden", "6", "--in-dim", "5", "--batch", "8", "--fd-samples", "0"]
    assert cli.main(args + ["--devices", "3"]) == 2
    assert "does not split evenly over 3 devices" in capsys.readouterr().err
    assert cli.main(args + ["--devices", "two"]) == 2
    assert "positive integer, all or auto" in capsys.readouterr().err


# ----------------------------------------------------------- training on N devices


@pytest.fixture(scope="module")
def runs():
    """Final state and per-step cross-entropy of each (grad mode, device count);
    0 devices: train.run_steps without a mesh. (autodiff on a 1-device mesh is
    the 0-device program with a trivial sharding: skipped to save a compilation.)"""
    return {(mode, n): cases.run(mode, meshes.data_placement(n) if n else None)
            for mode, counts in (("manual", (0, 1, 2, 4)), ("autodiff", (0, 2, 4))) for n in counts}


@pytest.mark.parametrize("mode", ["manual", "autodiff"])
def test_training_gives_the_same_model_on_1_2_and_4_devices(runs, mode):
    ref_state, ref_ce = runs[mode, 0]
    _, _, X_val, y_val = cases.data()
    val = evaluate.make_eval_set(X_val, y_val)
    spec = cases.cfg(mode).spec
    ref_acc = evaluate.evaluate(ref_state.params, ref_state.bn_state, val, spec)[1]
    assert ref_acc > 0.4   # it learned something, so equal accuracies mean something
    for n in (1, 2, 4) if mode == "manual" else (2, 4):
        state, ce = runs[mode, n]
        assert int(state.step) == cases.RUN_STEPS
        assert state.params[0]["W"].sharding.is_fully_replicated
        assert cases.max_diff((state.params, state.bn_state),
                              (ref_state.params, ref_state.bn_state)) <= cases.TOL_DEVICES
        np.testing.assert_allclose(ce, ref_ce, rtol=cases.TOL_DEVICES)
        # evaluation takes the replicated state as it is
        assert evaluate.evaluate(state.params, state.bn_state, val, spec)[1] == ref_acc


def test_a_checkpoint_from_4_devices_resumes_on_1_and_2(runs, tmp_path):
    state, _ = cases.run("manual", meshes.data_placement(4), stop_step=cases.SEGMENT)
    checkpoint.save(tmp_path / "c.npz", {"state": state}, {})
    template = jax.eval_shape(lambda: {"state": train.init_state(0, cases.cfg("manual"), 48, cases.HP)})
    for n in (1, 2):
        loaded = checkpoint.load(tmp_path / "c.npz", template)[0]["state"]
        resumed, _ = cases.run("manual", meshes.data_placement(n), loaded, start_step=cases.SEGMENT)
        assert int(resumed.step) == cases.RUN_STEPS
        assert cases.max_diff(resumed.params, runs["manual", 4][0].params) <= cases.TOL_DEVICES


# ------------------------------------------------ the per-step check on a mesh


def _checked_segment(place):
    """One segment of manual-mode training on the mesh with the per-step check on
    every step -> (state, StepCheck rows)."""
    from svhn_jax.nn import stepcheck

    c = cases.cfg("manual")._replace(check_every=1)
    X, y = meshes.shard_rows(*cases.data()[:2], place)
    state = train.init_state(0, c, 48, cases.HP)
    order = train.epoch_order(state.key, 0, cases.N_TRAIN, cases.BATCH)
    state, (_, _, checks) = parallel.run_steps(state, cases.HP, X, y, order, 0, c, cases.SEGMENT, place)
    return state, stepcheck.records(checks, 1)


def test_the_per_step_check_proves_the_sharded_step(runs):
    """--gradcheck-every on 4 devices: every check passes and training is unchanged."""
    from svhn_jax.nn import stepcheck

    state, rows = _checked_segment(meshes.data_placement(4))
    assert len(rows) == cases.SEGMENT and stepcheck.first_failure(rows) is None
    plain, _ = cases.run("manual", meshes.data_placement(4), stop_step=cases.SEGMENT)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("devices,precision", [(4, "highest"), (2, "tensorfloat32"), (2, "bfloat16")])
def test_the_per_step_check_catches_a_gradient_averaged_over_devices(monkeypatch, devices, precision):
    """The hand reduction made a mean instead of a sum: each device's share of the
    gradient is then 1/D of what it should be, and every checked step fails, also
    where the products are rounded as a GPU's or a TPU's are (tests/reduced_precision.py),
    on which correct code passes every check."""
    import reduced_precision
    from svhn_jax.nn import stepcheck

    reduced_precision.use(monkeypatch)
    verdicts = []
    for averaged in (False, True):
        if averaged:
            monkeypatch.setattr(model, "allreduce_grads", lambda g, axis: jax.lax.pmean(g, axis))
        jax.clear_caches()
        try:
            with jax.default_matmul_precision(precision):
                _, rows = _checked_segment(meshes.data_placement(devices))
        finally:
            jax.clear_caches()
        assert len(rows) == cases.SEGMENT
        verdicts.append([stepcheck.passed(r) for r in rows])
    monkeypatch.undo()
    assert all(verdicts[0]) and not any(verdicts[1])

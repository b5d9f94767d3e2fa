"""The composition cells on a mesh of 4 devices (test_compose.py runs this file with
JAX_NUM_CPU_DEVICES=4; in a process with fewer devices it is skipped): a single run
split over 4 devices, an ensemble of 2 on a 2 x 2 mesh (models x data) and a sweep
group on 4 devices, each with the per-step check, mid-epoch checkpoints and an exact
resume, and each equal to its one-device run up to float32 summation order."""

import jax
import numpy as np
import pytest

from svhn_jax import config
from svhn_jax.nn import distcheck, layers, model
from svhn_jax.run import launch, parts
from svhn_jax.step import mesh as meshes
from svhn_jax.tune import sweep

import compose_cases as cases

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices: "
                                "tests/test_compose.py runs this file with JAX_NUM_CPU_DEVICES=4")

# Parameters of a 4-device run vs the one-device run, max |a - b| / max |b| per leaf,
# after 2 epochs (18 steps) of this file's runs: measured 1.8e-7 (one model) and 1.7e-7
# (the ensemble) here (9.3e-7 and 2.4e-7 after 36 steps): float32 sums in another order. A
# margin of 10 or more (test_parallel_devices shows wrong reductions caught;
# parallel_cases.TOL_DEVICES is the same bound after 18 steps).
TOL = 1e-5


def _rel(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("ensemble", [1, 2])
def test_a_run_on_4_devices_composes_and_equals_one_device(tmp_path, ensemble):
    m = cases.flow(tmp_path / "four", devices="4", ensemble=ensemble)
    assert m["mesh"] == ({"models": 1, "data": 4} if ensemble == 1 else {"models": 2, "data": 2})
    # the one-device flow itself is tests/test_compose.py's: here its uninterrupted run
    c = config.make(**{**cases.SETTINGS, "devices": "1", "ensemble": ensemble})
    assert launch.train_run(c, tmp_path / "one", quiet=True)["mesh"] == {"models": 1, "data": 1}
    a, b = cases.state(tmp_path / "four" / "whole"), cases.state(tmp_path / "one")
    assert _rel((a.params, a.bn_state), (b.params, b.bn_state)) <= TOL


def test_a_sweep_group_on_4_devices_equals_one_device():
    c = config.make(**{**cases.SETTINGS, "checkpoint_every": 0})
    data = parts.load_split(c)
    data.pop("test")
    lrs = (1e-3, 3e-3, 1e-2)   # 3 models on 4 devices: a 3 x 1 mesh
    runs = {d: sweep.train_group([c.replace(lr=lr, devices=d) for lr in lrs], data) for d in ("4", "1")}
    for four, one in zip(runs["4"], runs["1"]):
        assert four["status"] == one["status"] == "completed"
        modes = [r["mode"] for r in four["gradchecks"]]   # each step, and each epoch's end in eval mode
        assert (modes.count("train"), modes.count("eval")) == (cases.STEPS, cases.SETTINGS["epochs"])
        assert all(r["passed"] for r in four["gradchecks"])
        np.testing.assert_allclose([h["val_loss"] for h in four["history"]],
                                   [h["val_loss"] for h in one["history"]], rtol=TOL)


def test_a_sweep_on_4_devices_stops_inside_a_group_and_resumes(tmp_path, monkeypatch):
    resumed, whole = cases.stopped_sweep(tmp_path, monkeypatch)
    assert resumed == whole


def test_dropout_on_4_devices_drops_what_one_device_drops(monkeypatch):
    """Dropout's mask follows each row's global index, so the batch split over 4 devices
    drops what one device drops: 6 checked steps of the sharded hand backward end where
    one device ends (every check passing), and the sharded hand backward equals
    jax.grad of the global loss; a mask drawn from each device's local row index fails
    that check."""
    import parallel_cases as pc
    from svhn_jax.nn import stepcheck
    from svhn_jax.step import parallel, train

    cfg = pc.cfg("manual")._replace(spec=model.make_spec((16,), batchnorm="before", rates=("input_dropout", "dropout")),
                                    check_every=1)
    hp = pc.HP._replace(dropout=np.float32(0.3), input_dropout=np.float32(0.1))
    X, y = pc.data()[:2]
    fresh = lambda: train.init_state(0, cfg, 48, hp)   # each run donates its state
    order = train.epoch_order(fresh().key, 0, pc.N_TRAIN, pc.BATCH)
    one, _ = train.run_steps(fresh(), hp, X, y, order, 0, cfg._replace(check_every=0), pc.SEGMENT)
    place = meshes.data_placement(4)
    four, out = parallel.run_steps(fresh(), hp, *meshes.shard_rows(X, y, place), order, 0, cfg, pc.SEGMENT, place)
    rows = stepcheck.records(out[2], 1)
    assert len(rows) == pc.SEGMENT and all(r["passed"] for r in rows)
    assert _rel((four.params, four.bn_state), (one.params, one.bn_state)) <= TOL
    spec = model.make_spec((6,), batchnorm="before", rates=("input_dropout", "dropout"))
    check = lambda: distcheck.check_sharded_model(spec, meshes.data_placement(4).mesh, in_dim=5, batch=8)
    assert check()["ok"]
    keep = layers.dropout_keep
    monkeypatch.setattr(layers, "dropout_keep", lambda key, rate, shape, axis_name=None: keep(key, rate, shape))
    assert not check()["ok"]

"""Images stay uint8 on the device and are normalised per batch inside the compiled
step (`StepConfig.prep`), and a run's data are laid out without copies.

The reference for per-batch normalisation is normalising the whole set first with the
same function (`preprocess.apply_device`, itself pinned against the NumPy `apply` in
test_preprocess_device.py): a batch's rows are normalised one by one, so the two
orders give the same bits, and training on either gives the same parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svhn_jax import config
from svhn_jax.run import parts as rundata, launch as runs
from svhn_jax.step import evaluate as evaluation, settings as stepconfig, train
from svhn_jax.data import arrays, preprocess
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model

N, BATCH = 96, 16


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)
    X[:4] = 77   # constant images: the image mode's special case
    return X, rng.integers(0, 10, size=N).astype(np.int32)


def _configs(X, *, shift):
    """(config on uint8 with prep, config on float features, features) per mode."""
    for mode in preprocess.MODES:
        for gray in (False, True):
            fitted = preprocess.fit(X, mode=mode, grayscale=gray)
            prep = preprocess.device_prep(fitted)
            base = train.StepConfig(spec=model.make_spec((8,), batchnorm="before"), batch=BATCH,
                                    shift=shift, image_shape=(32, 32, 1 if gray else 3))
            whole = jax.jit(preprocess.apply_device, static_argnums=1)(X.reshape(len(X), -1), prep)
            yield f"{mode}-{'gray' if gray else 'rgb'}", base._replace(prep=prep), base, whole


@pytest.mark.parametrize("shift", [0, 2])
def test_batches_of_uint8_images_equal_batches_of_preprocessed_ones(images, shift):
    X, y = images
    order = train.epoch_order(jax.random.key(1), 0, N, BATCH)
    batch = jax.jit(train.get_batch, static_argnames="cfg")
    for name, on_uint8, on_float, whole in _configs(X, shift=shift):
        for i in (0, 3):
            xb, yb = batch(jnp.asarray(X.reshape(N, -1)), y, order, i, jax.random.key(2), i, cfg=on_uint8)
            ref, ref_y = batch(whole, y, order, i, jax.random.key(2), i, cfg=on_float)
            assert xb.dtype == jnp.float32, name
            if on_uint8.prep.mode in preprocess.LOCAL and jax.default_backend() != "cpu":
                # The local mode's blurs are products: XLA:CPU sums each output's 32 terms
                # the same way for a batch and for the whole set; another backend may pick
                # another kernel per shape. Then: 8 float32 ulps of 255 (2^-13 px) over the
                # local deviation of these random images (> 10 px; constant images give 0).
                np.testing.assert_allclose(np.asarray(xb), np.asarray(ref), rtol=1e-5,
                                           atol=2.0 ** -13 / 10, err_msg=name)
            else:
                np.testing.assert_array_equal(np.asarray(xb), np.asarray(ref), err_msg=name)
            np.testing.assert_array_equal(np.asarray(yb), np.asarray(ref_y))


def test_training_on_uint8_images_equals_training_on_features(images):
    X, y = images
    order = train.epoch_order(jax.random.key(1), 0, N, BATCH)
    hp = train.Hyper(lr=jnp.float32(1e-2), reg=jnp.float32(1e-3))
    spe = train.steps_per_epoch(N, BATCH)
    for name, on_uint8, on_float, whole in _configs(X, shift=2):
        if name != "image-gray":   # the mission's setting; the batches test covers the rest
            continue
        fresh = lambda: train.init_state(0, on_float, whole.shape[1], hp)
        a, (ce_a, _) = train.run_steps(fresh(), hp, jnp.asarray(X.reshape(N, -1)), y, order, 0,
                                       on_uint8, spe)
        b, (ce_b, _) = train.run_steps(fresh(), hp, whole, y, order, 0, on_float, spe)
        for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
        np.testing.assert_array_equal(np.asarray(ce_a), np.asarray(ce_b))


def test_evaluating_uint8_images_equals_evaluating_features(images):
    X, y = images
    for name, on_uint8, on_float, whole in _configs(X[:50], shift=0):
        params, bn_state = model.init(jax.random.key(3), on_float.spec, whole.shape[1])
        got = evaluation.evaluate(params, bn_state, evaluation.make_eval_set(X[:50], y[:50], chunk=16),
                             on_uint8.spec, on_uint8.prep)
        want = evaluation.evaluate(params, bn_state, evaluation.make_eval_set(whole, y[:50], chunk=16),
                              on_float.spec)
        assert got[:2] == want[:2], name
        np.testing.assert_array_equal(got[2], want[2])


def test_uint8_images_without_their_preprocessing_are_refused(images):
    X, y = images
    cfg = train.StepConfig(spec=model.make_spec((8,)), batch=BATCH)
    with pytest.raises(SvhnJaxError, match="without their preprocessing"):
        train.get_batch(jnp.asarray(X.reshape(N, -1)), y, jnp.arange(N), 0, jax.random.key(0), 0, cfg)
    es = evaluation.make_eval_set(X, y)
    assert es.X.dtype == jnp.uint8
    params, bn_state = model.init(jax.random.key(0), cfg.spec, 3072)
    with pytest.raises(SvhnJaxError, match="without their preprocessing"):
        evaluation.evaluate(params, bn_state, es, cfg.spec)


# ---------------------------------------------------------------- the layout in memory


def test_gather_in_place_equals_fancy_indexing():
    rng = np.random.default_rng(4)
    for n, k in ((1, 1), (10, 10), (1000, 1), (1000, 999), (9000, 5000)):
        X = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
        idx = np.sort(rng.choice(n, size=k, replace=False))
        want = X[idx]
        got = rundata.gather_in_place(X, idx, chunk=64)
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, X)
    with pytest.raises(SvhnJaxError, match="sorted, distinct"):
        rundata.gather_in_place(np.zeros((3, 2)), np.array([1, 0]))


@pytest.mark.parametrize("layout", ["all", "official", "train_on_val"])
def test_split_rearranges_inside_the_loaded_array(layout):
    """consume=True gives the same parts as copies would, each a view of the loaded images."""
    rng = np.random.default_rng(5)
    X = arrays.empty_aligned((400, 32, 32, 3), np.uint8)
    X[:] = rng.integers(0, 256, size=X.shape, dtype=np.uint8)
    y = rng.integers(0, 10, size=400).astype(np.int32)
    c = config.make(data="synthetic", train_on_val=layout == "train_on_val")
    test = (X[:40].copy(), y[:40].copy())
    loaded = lambda: ({"train": (X.copy(), y), "test": test} if layout == "official"
                      else {"all": (X.copy(), y)})
    want = rundata.split(c, loaded())
    fresh = loaded()
    got = rundata.split(c, fresh, consume=True)
    big = fresh["train" if layout == "official" else "all"][0]
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k][0], want[k][0], err_msg=k)
        np.testing.assert_array_equal(got[k][1], want[k][1], err_msg=k)
    shared = {k for k in got if np.shares_memory(got[k][0], big)}
    # every part lives in the loaded array but the official test and, with train_on_val
    # (the training part holds the validation images too), test, for which no rows are left
    expected = {"all": {"train", "val", "test"}, "official": {"train", "val"},
                "train_on_val": {"train", "val"}}[layout]
    assert shared == expected


def test_aligned_host_images_are_shared_with_the_cpu_device():
    """What keeps a run's memory to one copy of its training images on a CPU."""
    X = arrays.empty_aligned((100, 32, 32, 3), np.uint8)
    assert X.ctypes.data % arrays.ALIGN == 0 and X.flags.c_contiguous and X.flags.writeable
    X[:] = 7
    on_device = train.put_images(X)
    assert on_device.shape == (100, 3072) and on_device.dtype == jnp.uint8
    if jax.default_backend() == "cpu":
        assert on_device.unsafe_buffer_pointer() == X.ctypes.data


def test_synthetic_and_split_parts_stay_aligned():
    c = config.make(data="synthetic", synthetic_n=500)
    parts = rundata.load_split(c)
    assert parts["train"][0].ctypes.data % arrays.ALIGN == 0


def test_extra_needs_svhn_data():
    with pytest.raises(SvhnJaxError, match="--extra adds SVHN's extra images to --data svhn"):
        config.make(data="synthetic", extra=True)
    assert config.make(extra=True).extra   # --data svhn is the default


def test_step_config_carries_the_fitted_preprocessing():
    c = config.make("mission")
    fitted = {"mode": "image", "grayscale": True, "channels": 1, "eps": 1e-6}
    assert stepconfig.step_config(c, 10, fitted).prep == preprocess.device_prep(fitted)
    assert stepconfig.step_config(c, 10).prep is None


@pytest.mark.parametrize("source", ["synthetic", "npz", "train_on_val"])
def test_a_process_reads_only_its_training_rows(source, tmp_path, monkeypatch):
    """load_split_rows (several processes: each its devices' rows) equals a slice of
    load_split's training part, and synthetic data make no other training image."""
    from svhn_jax.data import sources

    settings = dict(data="synthetic", synthetic_n=900, train_on_val=source == "train_on_val")
    if source == "npz":
        X, y = sources.synthetic(900, 5)
        np.savez(tmp_path / "d.npz", X=X, y=y)
        settings = dict(data=str(tmp_path / "d.npz"))
    c = config.make(**settings)
    whole = rundata.load_split(c)
    made = []
    real = sources.synthetic
    monkeypatch.setattr(sources, "synthetic",
                        lambda n, seed, rows=None: made.append(len(rows)) or real(n, seed, rows))
    mine = lambda n: slice(n // 2, n // 2 + 100)
    parts, n = rundata.load_split_rows(c, mine)
    assert n == len(whole["train"][1])
    for k in whole:
        want = (whole[k][0][mine(n)], whole[k][1][mine(n)]) if k == "train" else whole[k]
        np.testing.assert_array_equal(parts[k][0], want[0], err_msg=k)
        np.testing.assert_array_equal(parts[k][1], want[1], err_msg=k)
    if source != "npz":   # the training images made: this process's 100 only
        assert made == [100, len(parts["val"][1]), len(parts["test"][1])]


def test_a_run_of_several_processes_reads_by_rows(monkeypatch):
    """launch._load takes load_split_rows with the rows of this process's devices when
    there are several processes (simulated: one process, told it is one of two)."""
    from svhn_jax.step import mesh as meshes

    calls = []
    real = rundata.load_split_rows
    monkeypatch.setattr(rundata, "load_split_rows",
                        lambda c, rows, **k: calls.append(rows) or real(c, rows, **k))
    c = config.make(data="synthetic", synthetic_n=300)
    place = meshes.data_placement(1)
    assert runs._load(c, place)[1] == 210 and calls == []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts, n = runs._load(c, place)
    assert n == 210 and calls[0](n) == meshes.local_rows(n, place)

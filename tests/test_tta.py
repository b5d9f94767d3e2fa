"""Test-time averaging (--tta N): the softmax averaged over an image and its one-pixel
shifts, pinned against NumPy written here, for one model, K stacked models and an
ensemble; on a run's scoring path and in `svhn-jax evaluate`."""

import jax
import numpy as np
import pytest

from svhn_jax import cli, config
from svhn_jax.data import augment, preprocess
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model
from svhn_jax.run import evaluate as run_evaluate
from svhn_jax.run import folder, launch
from svhn_jax.step import evaluate as evaluation

SPEC = model.make_spec((8,))
PREP = {"mode": "image", "grayscale": True, "channels": 1, "eps": 1e-6}
SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def _data(n=21, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def _params(seed):
    return model.init(jax.random.key(seed), SPEC, 1024)


def _np_probs(params, X, tta):
    """The softmax of Dense-ReLU-Dense averaged over the first tta copies, in float64."""
    z = preprocess.apply(X, PREP).reshape(-1, 32, 32).astype(np.float64)
    W1, b1, W2, b2 = (np.asarray(params[i][k], np.float64) for i, k in ((0, "W"), (0, "b"), (2, "W"), (2, "b")))
    total = 0.0
    for dy, dx in SHIFTS[:tta]:
        moved = np.zeros_like(z)   # moved[r, c] = z[r - dy, c - dx], 0 outside
        moved[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)] = \
            z[:, max(-dy, 0):32 - max(dy, 0), max(-dx, 0):32 - max(dx, 0)]
        logits = np.maximum(moved.reshape(len(z), -1) @ W1 + b1, 0) @ W2 + b2
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        total = total + e / e.sum(axis=1, keepdims=True)
    return total / tta


@pytest.mark.parametrize("tta", [1, 3, 9])
def test_one_model_scores_the_averaged_softmax(tta):
    X, y = _data()
    params, state = _params(0)
    es = evaluation.make_eval_set(X, y, chunk=8)   # 3 chunks, the last one padded
    loss, acc, pred = evaluation.evaluate(params, state, es, SPEC, preprocess.device_prep(PREP), tta)
    p = _np_probs(params, X, tta)
    np.testing.assert_array_equal(pred, p.argmax(axis=1))
    assert acc == pytest.approx(np.mean(p.argmax(axis=1) == y))
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-5)
    if tta > 1:   # the copies change the probabilities
        assert not np.allclose(p, _np_probs(params, X, 1), atol=1e-3)


def test_stacked_models_and_an_ensemble_average_the_same_way():
    X, y = _data(seed=1)
    members = [_params(s) for s in (1, 2)]
    params, state = jax.tree.map(lambda *a: np.stack(a), *members)
    es, prep = evaluation.make_eval_set(X, y, chunk=8), preprocess.device_prep(PREP)
    losses, accs = evaluation.evaluate_many(params, state, es, SPEC, prep, tta=3)
    for i, (p_i, s_i) in enumerate(members):
        loss, acc, _ = evaluation.evaluate(p_i, s_i, es, SPEC, prep, 3)
        assert (losses[i], accs[i]) == pytest.approx((loss, acc), rel=1e-6)
    loss, acc, pred, member_acc = evaluation.evaluate_ensemble(params, state, es, SPEC, prep=prep, tta=3)
    probs = [_np_probs(p_i, X, 3) for p_i, _ in members]
    p = (probs[0] + probs[1]) / 2
    np.testing.assert_array_equal(pred, p.argmax(axis=1))
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-5)
    assert member_acc == pytest.approx([np.mean(q.argmax(axis=1) == y) for q in probs])


@pytest.mark.parametrize("bad", [0, 10, True, 2.0])
def test_a_bad_number_of_copies_is_one_clear_error(bad):
    X, y = _data(n=4)
    with pytest.raises(SvhnJaxError, match="--tta must be >= 1 and <= 9"):
        evaluation.evaluate(*_params(0), evaluation.make_eval_set(X, y), SPEC,
                            preprocess.device_prep(PREP), bad)


def test_the_setting_allows_exactly_the_copies_there_are():
    """config.py (JAX-free) states the bound as a number; it must be the copies
    data.augment defines, or --tta would accept a value evaluation refuses."""
    assert config.FIELDS["tta"].metadata["high"] == len(augment.TTA_OFFSETS)


def test_a_run_scores_with_its_tta_and_evaluate_can_change_it(tmp_path, capsys):
    run = tmp_path / "run"
    m = launch.train_run(config.make(data="synthetic", synthetic_n=200, hidden=(8,), batch=32,
                                     epochs=1, tta=3, tensorboard=False), run, quiet=True)
    assert folder.read_run(run)[0].tta == 3   # in config.json
    r = run_evaluate.evaluate_run(run)
    assert (r["tta"], r["accuracy"], r["loss"]) == (3, m["test_acc"], pytest.approx(m["test_loss"]))
    plain = run_evaluate.evaluate_run(run, tta=1)
    assert plain["tta"] == 1 and 0.0 <= plain["accuracy"] <= 1.0 and plain["loss"] != r["loss"]
    assert cli.main(["evaluate", "--run", str(run), "--tta", "2"]) == 0
    assert "softmax averaged over 2 copies" in capsys.readouterr().out
    assert cli.main(["evaluate", "--run", str(run), "--tta", "10"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: --tta must be >= 1 and <= 9") and err.count("\n") == 1

"""Issue 9, item 9: the gradient check never fails correct code, and still fails every bug.

Before: `svhn-jax gradcheck --batchnorm --batch 2 --seed 1 --hidden 16 --in-dim 12
--fd-samples 0` failed on correct code (hand vs finite differences 2.1e-6 > 1e-6 on
0.dense.W). The cause was truncation, not rounding: halving the step quartered the
error. gradcheck now extrapolates (Richardson), sets aside the rare entries whose
difference is not smooth, and forgives derived rounding floors, for hand vs jax.grad
too (which reached 7.8e-10 > 1e-10 on correct code at batch 2, BatchNorm after ReLU).

The sweep draws 200 cases (seed, batch 2..16, widths, BatchNorm none/before/after,
train/eval, L2 0 or 0.1) from a fixed generator. To stay fast, the layouts (the
shapes, which each cost a compilation) come from a pool of 12, drawn once: four at
batch 2, the hardest case, and eight at batches drawn from 3..16; the seeds and
L2 strengths are drawn per case. The maximum errors are printed (`pytest -rP` shows
them) and recorded as test properties.
"""

import json

import numpy as np
import pytest

from svhn_jax import cli
from svhn_jax.nn import coverage, gradcheck, layers, model
from svhn_jax.nn.gradcheck import GradCheckError

from test_gradcheck import (bn_backward_missing_mean_term, nan_dense_backward, relu_backward_wrong_side,
                            sign_flipped_dense_backward, _drop_last_bias, _patch)

N_CASES = 200
MODES = (("none", True), ("before", True), ("before", False), ("after", True), ("after", False))
HARD = [(2, (5,), 4, "before", True), (2, (5,), 4, "after", True),
        (2, (4, 3), 3, "before", True), (2, (4, 3), 3, "after", False)]


def _layouts(rng):
    drawn = []
    for _ in range(8):
        hidden = [(5,), (4, 3), (7,)][rng.integers(3)]
        drawn.append((int(rng.integers(3, 17)), hidden, int(rng.integers(2, 7)), *MODES[rng.integers(5)]))
    return HARD + drawn


def test_correct_code_never_fails_over_200_random_cases(record_property):
    rng = np.random.default_rng(9)
    layouts = _layouts(rng)
    worst = {"manual_vs_autodiff": (0.0, None), "manual_vs_finite_diff": (0.0, None)}
    failures, entries, set_aside = [], 0, 0
    for i in range(N_CASES):
        batch, hidden, in_dim, bn, train = layouts[i % len(layouts)]
        seed, reg = int(rng.integers(2**31)), float(rng.choice([0.0, 0.1]))
        case = dict(batch=batch, hidden=hidden, in_dim=in_dim, batchnorm=bn, train=train, reg=reg, seed=seed)
        r = gradcheck.check_model(model.make_spec(hidden, batchnorm=bn), in_dim=in_dim, batch=batch,
                                  reg=reg, train=train, seed=seed)
        for kind in worst:
            if r[f"max_rel_error_{kind}"] > worst[kind][0]:
                worst[kind] = (r[f"max_rel_error_{kind}"], case)
        if not r["ok"]:
            failures.append((case, r["failures"]))
        entries += sum(leaf["fd_entries"] + leaf["fd_set_aside"] for leaf in r["leaves"])
        set_aside += sum(leaf["fd_set_aside"] for leaf in r["leaves"])
    summary = (f"{N_CASES} cases over {len(layouts)} layouts, {entries} entries differentiated, "
               f"{set_aside} set aside as non-smooth: max hand vs jax.grad "
               f"{worst['manual_vs_autodiff'][0]:.2e} (tolerance {gradcheck.TOL_AUTODIFF:.0e}) at "
               f"{worst['manual_vs_autodiff'][1]}; max hand vs finite differences "
               f"{worst['manual_vs_finite_diff'][0]:.2e} (tolerance {gradcheck.TOL_FINITE_DIFF:.0e}) at "
               f"{worst['manual_vs_finite_diff'][1]}")
    print(summary)
    for kind, (value, _) in worst.items():
        record_property(f"max_{kind}", value)
    assert not failures, f"{len(failures)} failures of correct code, first {failures[0]}; {summary}"
    assert worst["manual_vs_finite_diff"][0] > 0    # the comparison ran on something
    assert set_aside <= 0.01 * entries, summary     # and kept nearly every entry


def test_batchnorm_layer_at_batch_2_never_fails():
    worst = 0.0
    for seed in range(20):
        for train in (True, False):
            r = gradcheck.check_layer("batchnorm", batch=2, in_dim=5, train=train, seed=seed)
            assert r["ok"], r["failures"]
            worst = max(worst, r["max_rel_error_manual_vs_finite_diff"])
    print(f"BatchNorm layer, batch 2, 20 seeds x train/eval: max hand vs finite differences {worst:.2e}")


def test_the_command_that_failed_correct_code_passes(capsys):
    assert cli.main(["gradcheck", "--batchnorm", "--batch", "2", "--seed", "1", "--hidden", "16",
                     "--in-dim", "12", "--fd-samples", "0", "--activation", "relu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["failures"] == []
    # the command runs exactly check_all: same checks, same numbers
    assert out["checks"] == coverage.check_all((16,), placements=("before", "after"), activations=("relu",),
                                               batch=2, in_dim=12, reg=0.1, seed=1)
    assert [c["check"] for c in out["checks"]][-4:] == [
        "model 12-16-10 dense-batchnorm-relu (train), L2=0.1", "model 12-16-10 dense-batchnorm-relu (eval), L2=0.1",
        "model 12-16-10 dense-relu-batchnorm (train), L2=0.1", "model 12-16-10 dense-relu-batchnorm (eval), L2=0.1"]


# ---------------------------------------------- every bug still fails, at batch 2

BUGS = {
    "dense sign flip": ("dense", sign_flipped_dense_backward),
    "batchnorm missing mean term": ("batchnorm", bn_backward_missing_mean_term),
    "relu gradient on the wrong side": ("relu", relu_backward_wrong_side),
    "dense NaN gradient": ("dense", nan_dense_backward),
}


@pytest.mark.parametrize("layout", HARD[:2], ids=["bn-before", "bn-after"])
@pytest.mark.parametrize("bug", list(BUGS))
def test_every_bug_fails_against_both_references(monkeypatch, bug, layout):
    """At the sweep's hardest layouts (batch 2, no L2: the tiniest gradients, where the
    rounding floor matters most), each bug fails against jax.grad AND against finite
    differences alone."""
    batch, hidden, in_dim, bn, train = layout
    _patch(monkeypatch, *BUGS[bug])
    for seed in (0, 1):
        r = gradcheck.check_model(model.make_spec(hidden, batchnorm=bn), in_dim=in_dim, batch=batch,
                                  reg=0.0, train=train, seed=seed)
        assert any("differs from jax.grad" in f for f in r["failures"]), r
        assert any("differs from finite differences" in f for f in r["failures"]), r
        assert not r["max_rel_error_manual_vs_finite_diff"] <= 1e3 * gradcheck.TOL_FINITE_DIFF, r


@pytest.mark.parametrize("layout", HARD[:2], ids=["bn-before", "bn-after"])
def test_a_dropped_leaf_fails_at_batch_2(layout):
    batch, hidden, in_dim, bn, train = layout
    with pytest.raises(GradCheckError, match=r"lacks 3\.dense\.b"):
        gradcheck.check_model(model.make_spec(hidden, batchnorm=bn), in_dim=in_dim, batch=batch,
                              reg=0.0, train=train, manual=_drop_last_bias)


def test_the_layers_used_here_are_the_real_ones():
    """The patches above are undone: a check after them passes again."""
    assert layers.LAYERS["dense"].backward is layers.dense_backward
    assert gradcheck.check_model(model.make_spec((5,), batchnorm="before"), in_dim=4, batch=2, reg=0.0)["ok"]

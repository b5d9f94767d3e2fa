"""`svhn-jax gradcheck`: readable table, JSON schema, non-zero exit on failure."""

import json

import pytest
import subprocess
import sys

from svhn_jax import cli
from svhn_jax.nn import layers
from svhn_jax.errors import EXIT_CHECK_FAILED

ARGS = ["gradcheck", "--hidden", "12,6", "--in-dim", "10", "--batch", "6", "--fd-samples", "0", "--activation",
        "relu"]


VARIANTS = ["dense (with bias)", "relu", "dense (no bias)", "batchnorm (train mode)", "batchnorm (eval mode)",
            "softmax cross-entropy + L2"] + [
    f"model 10-12-6-10 {block} ({mode}), L2=0.1" for block in ("dense-relu", "dense-batchnorm-relu",
                                                                 "dense-relu-batchnorm")
    for mode in ("train", "eval")]


def test_the_default_command_checks_every_variant_and_lists_them(capsys):
    assert cli.main(ARGS + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variants"] == VARIANTS
    assert cli.main(ARGS) == 0
    out = capsys.readouterr().out
    assert "12 variants checked:\n" + "".join(f"  ok     {v}\n" for v in VARIANTS) in out


def test_flags_narrow_the_models_and_the_layer_variants_they_contain(capsys):
    assert cli.main(ARGS + ["--placement", "none", "--mode", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variants"] == [
        "dense (with bias)", "relu", "softmax cross-entropy + L2", "model 10-12-6-10 dense-relu (train), L2=0.1"]
    assert cli.main(ARGS + ["--batchnorm", "--mode", "eval", "--json"]) == 0   # = --placement before,after
    assert json.loads(capsys.readouterr().out)["variants"] == [
        "dense (no bias)", "batchnorm (eval mode)", "relu", "dense (with bias)", "softmax cross-entropy + L2",
        "model 10-12-6-10 dense-batchnorm-relu (eval), L2=0.1", "model 10-12-6-10 dense-relu-batchnorm (eval), L2=0.1"]
    with pytest.raises(SystemExit) as e:
        cli.main(ARGS + ["--placement", "middle"])
    assert e.value.code == 2 and "'middle': choose from none,before,after" in capsys.readouterr().err
    assert cli.main(ARGS + ["--batchnorm", "--placement", "none"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_the_default_command_sees_the_branch_of_a_dense_layer_without_bias(monkeypatch, capsys):
    """A bug in the bias-less branch (a Dense before BatchNorm) fails the command
    a user runs, not only the suite."""
    bwd = layers.LAYERS["dense"].backward
    def broken(p, cache, dy):
        g, dx = bwd(p, cache, dy)
        return (g if "b" in p else {"W": 1.01 * g["W"]}), dx
    monkeypatch.setitem(layers.LAYERS, "dense", layers.LAYERS["dense"]._replace(backward=broken))
    assert cli.main(ARGS) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "FAILED dense (no bias)" in out and "ok     dense (with bias)" in out
    assert "FAILED model 10-12-6-10 dense-batchnorm-relu (train), L2=0.1" in out
    assert cli.main(ARGS + ["--placement", "none,after"]) == 0   # no Dense without bias there


def test_gradcheck_json_schema_and_pass(capsys):
    assert cli.main(ARGS + ["--batchnorm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert out["max_rel_error_manual_vs_autodiff"] <= 1e-10
    assert out["max_rel_error_manual_vs_finite_diff"] <= 1e-6
    names = {leaf["name"] for leaf in out["leaves"]}
    assert {"0.dense.W", "1.batchnorm.gamma", "1.batchnorm.beta", "softmax_ce.logits", "x"} <= names
    assert all(set(leaf) >= {"manual_vs_autodiff", "manual_vs_finite_diff", "fd_entries", "fd_set_aside"}
               for leaf in out["leaves"])


def test_gradcheck_fails_loudly_on_a_wrong_backward(monkeypatch, capsys):
    bwd = layers.LAYERS["relu"].backward
    # a plausible bug: passing the gradient where x < 0 instead of x > 0
    monkeypatch.setitem(layers.LAYERS, "relu", layers.LAYERS["relu"]._replace(
        backward=lambda p, mask, dy: bwd(p, ~mask, dy)))
    assert cli.main(ARGS) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "FAIL" in out and "<-- FAILED" in out
    assert "x: hand-written gradient differs from jax.grad" in out


def test_a_backward_that_drops_a_leaf_fails_with_its_name(monkeypatch, capsys):
    bwd = layers.LAYERS["dense"].backward
    drop_bias = lambda p, cache, dy: ({k: v for k, v in bwd(p, cache, dy)[0].items() if k != "b"},
                                      bwd(p, cache, dy)[1])
    monkeypatch.setitem(layers.LAYERS, "dense", layers.LAYERS["dense"]._replace(backward=drop_bias))
    assert cli.main(ARGS) == EXIT_CHECK_FAILED
    err = capsys.readouterr().err
    assert err.startswith("FAIL: ") and "dense.b" in err and "Traceback" not in err


def test_readable_table(capsys):
    assert cli.main(ARGS) == 0
    out = capsys.readouterr().out
    assert "hand~grad" in out and "aside" in out and "0.dense.W" in out and out.strip().endswith("PASS")


def test_bad_batch_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "svhn_jax.cli", "gradcheck", "--batch", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "at least 2" in r.stderr and "Traceback" not in r.stderr

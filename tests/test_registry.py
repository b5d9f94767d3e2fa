"""The layer registry (nn/layers.py LAYERS) is the one place a layer is named: the
model, the checks, the configuration and the README read it, and a layer added
there is checked without being listed anywhere else."""

import ast
import json
import re
from pathlib import Path

import jax.numpy as jnp
import pytest

from svhn_jax import cli, config
from svhn_jax.nn import coverage, gradcheck, layers, model

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "svhn_jax"
REGISTRY = PACKAGE / "nn" / "layers.py"


def named(source: str, names) -> list[tuple[int, str]]:
    """(line, name) of every string constant in `source` that equals one of `names`
    (docstrings and prose that merely mention a layer do not count)."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]


def test_the_finder_sees_a_layer_name_and_nothing_else():
    src = 'spec = [("dense", 4), ("relu", 4)]\nif name == "relu":\n    """relu is prose"""\nx = "relus"'
    assert sorted(named(src, {"dense", "relu"})) == [(1, "dense"), (1, "relu"), (2, "relu")]


def test_a_layer_is_named_only_in_its_registry_entry():
    """Outside nn/layers.py no module writes a layer's name; inside it, once, as its
    key in LAYERS. Some layers share their name with a setting (batchnorm, dropout):
    outside nn/ that string names the setting, so those are looked for in nn/ only."""
    names = set(layers.LAYERS)
    assert {"dense", "relu", "batchnorm"} <= names
    settings = names & set(config.FIELDS)
    assert "batchnorm" in settings   # the exception exists where it is made
    in_registry = named(REGISTRY.read_text(), names)
    assert sorted(n for _, n in in_registry) == sorted(names), in_registry
    keys = {node.value for node in ast.walk(ast.parse(REGISTRY.read_text())) if isinstance(node, ast.Dict)
            for node in node.keys if isinstance(node, ast.Constant)}
    assert names <= keys
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == REGISTRY:
            continue
        looked_for = names if path.parent.name == "nn" else names - settings
        offenders += [f"{path.relative_to(ROOT)}:{line} {name!r}" for line, name in named(path.read_text(), looked_for)]
    assert offenders == []


# A smooth activation that the package has never heard of: softsign x / (1 + |x|).

def _softsign_forward(params, state, x, *, train, key=None, rate=None, axis_name=None):
    return x / (1 + jnp.abs(x)), state, x


def _softsign_backward(params, x, dy):
    return {}, dy / (1 + jnp.abs(x)) ** 2


@pytest.fixture
def softsign(monkeypatch):
    relu = layers.LAYERS["relu"]
    monkeypatch.setitem(layers.LAYERS, "softsign", relu._replace(forward=_softsign_forward,
                                                                 backward=_softsign_backward, kinks=None))
    return "softsign"


def test_gradcheck_lists_a_new_layer_without_being_told(softsign, capsys, monkeypatch):
    others = set(layers.activations()) - {softsign}   # left out: fewer models to check, a faster test
    monkeypatch.setattr(layers, "LAYERS", {k: v for k, v in layers.LAYERS.items() if k not in others})
    args = ["gradcheck", "--hidden", "5", "--in-dim", "4", "--batch", "4", "--fd-samples", "0", "--mode", "train",
            "--json"]
    assert cli.main(args + ["--placement", "before"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["variants"] == ["dense (no bias)", "batchnorm (train mode)", "softsign", "dense (with bias)",
                               "softmax cross-entropy + L2", "model 4-5-10 dense-batchnorm-softsign (train), L2=0.1"]
    assert {leaf["name"] for leaf in out["leaves"] if leaf["check"] == "softsign"} == {"x"}


def test_a_model_without_relu_is_checked_and_named(softsign):
    """The checks named their models with names.index("relu"), which crashed on one
    without it."""
    spec = model.make_spec((6,), batchnorm="after", activation=softsign)
    assert [n for n, _ in spec] == ["dense", "softsign", "batchnorm", "dense"]
    r = gradcheck.check_model(spec, in_dim=5, batch=6)
    assert r["ok"] and r["check"] == "model 5-6-10 dense-softsign-batchnorm (train), L2=0.1"
    # every activation in a model; the first with every placement, the others with the first
    assert [s for s, _ in coverage.specs((6,), ("none", "after"), ("train",))] == [
        model.make_spec((6,), activation=a, batchnorm=bn) for a in layers.activations()
        for bn in (("none", "after") if a == "relu" else ("none",))]


def test_an_unknown_activation_is_a_clear_error():
    with pytest.raises(Exception, match="unknown activation 'swish'; choose one of relu"):
        model.make_spec((4,), activation="swish")
    assert cli.main(["gradcheck", "--activation", "swish"]) == 2


def test_the_registry_keeps_its_order_and_relu_is_the_default():
    """(The tests above change the registry; what they change is put back in place.)"""
    assert layers.activations()[0] == "relu" and list(layers.LAYERS)[:2] == ["dense", "relu"]


def test_the_readme_lists_the_registry():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a layer"):].split("\n## ")[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert listed == list(layers.LAYERS)

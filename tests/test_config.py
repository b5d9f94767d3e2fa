"""The one run configuration: validation, presets, the JSON form, --config, the flags
built from its fields, and the names it shares with modules that import JAX."""

import dataclasses
import json
import subprocess
import sys

import pytest

from svhn_jax import cli, config
from svhn_jax.run import folder as runfolder
from svhn_jax.step import settings as stepconfig
from svhn_jax.data import preprocess
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model, optim, schedules


def test_shared_names_agree_with_the_modules_that_own_them():
    assert config.OPTIMIZERS == tuple(optim.OPTIMIZERS)
    assert config.SCHEDULES == schedules.SCHEDULES
    assert config.BATCHNORM == model.BATCHNORM_PLACEMENTS
    assert config.PREPROCESS == preprocess.MODES


def test_config_imports_no_jax():
    code = "import sys, svhn_jax.config, svhn_jax.cli; print('jax' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_presets_are_valid_and_differ_from_the_defaults():
    for name, overrides in config.PRESETS.items():
        c = config.make(name)
        assert all(getattr(c, k) == (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items())
    assert config.make("mission") != config.RunConfig()


def test_json_round_trip_and_clear_errors_for_unknown_or_ill_typed_keys():
    c = config.make("best", lr=2e-3)
    assert config.from_json(json.loads(json.dumps(config.to_json(c)))) == c
    with pytest.raises(SvhnJaxError, match="unknown setting.*'lrr'"):
        config.from_json({"lrr": 1e-3})
    with pytest.raises(SvhnJaxError, match="--epochs must be an integer, got 'ten'"):
        config.from_json({"epochs": "ten"})
    with pytest.raises(SvhnJaxError, match="--grayscale must be true or false"):
        config.from_json({"grayscale": 1})


NUMBERS = [f.name for f in dataclasses.fields(config.RunConfig) if config.kind(f.name) in ("int", "float")]


# settings that take effect only beside another one
NEEDS = {"warmup_epochs": dict(schedule="warmup-constant"), "decay_factor": dict(schedule="step"),
         "decay_epochs": dict(schedule="step")}


@pytest.mark.parametrize("name", NUMBERS)
def test_every_bounded_field_rejects_values_outside_its_range(name):
    """Boundary values from the field's own metadata: the limit itself passes, one
    step beyond it fails with a message naming the flag."""
    m, kind = config.FIELDS[name].metadata, config.kind(name)
    assert any(m[k] is not None for k in ("low", "high", "above", "below")), "unbounded"
    base = config.make(**NEEDS.get(name, {}))
    step = 1 if kind == "int" else 1e-9
    for limit, outside in ((m["low"], -step), (m["high"], step)):
        if limit is not None:
            if name not in ("val_fraction", "test_fraction"):
                base.replace(**{name: limit})
            with pytest.raises(SvhnJaxError, match=f"--{name.replace('_', '-')} must be"):
                base.replace(**{name: limit + outside})
    for limit in (m["above"], m["below"]):
        if limit is not None:
            with pytest.raises(SvhnJaxError, match=f"--{name.replace('_', '-')} must be"):
                base.replace(**{name: limit})


def test_warm_up_settings():
    with pytest.raises(SvhnJaxError, match="no effect with --schedule cosine"):
        config.make(schedule="cosine", warmup_epochs=2.0)
    c = config.make(schedule="warmup-cosine")
    assert c.warmup_epochs is None and c.warmup == 1.0       # the documented default
    s = stepconfig.step_config(c, steps_per_epoch=50).schedule
    assert s.name == "warmup-cosine" and s.warmup_steps == 50
    assert stepconfig.step_config(c.replace(warmup_epochs=2.5), 50).schedule.warmup_steps == 125
    assert "(default 1)" in " ".join(cli.build_parser()._subparsers._group_actions[0]
                                     .choices["train"].format_help().split())


def test_every_field_is_a_train_flag_with_its_help():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["train"]
                    .format_help().split())
    for name, f in config.FIELDS.items():
        if "train" in f.metadata["commands"]:
            assert "--" + name.replace("_", "-") in text, name
    assert "--train-on-val" not in text      # a sweep's internal setting, not a flag


def test_config_file_reruns_and_varies_a_run(tmp_path, capsys):
    first = tmp_path / "a"
    args = ["--data", "synthetic", "--synthetic-n", "400", "--hidden", "8", "--epochs", "1",
            "--batch", "32", "--quiet"]
    assert cli.main(["train", "--out", str(first), *args, "--json"]) == 0
    m1 = json.loads(capsys.readouterr().out)
    assert cli.main(["train", "--config", str(first / "config.json"), "--out", str(tmp_path / "b"),
                     "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_sha256"] == m1["params_sha256"]
    assert cli.main(["train", "--config", str(first / "config.json"), "--lr", "3e-3",
                     "--out", str(tmp_path / "c"), "--quiet"]) == 0
    c, _ = runfolder.read_run(tmp_path / "c")
    assert (c.lr, c.hidden, c.synthetic_n) == (3e-3, (8,), 400)


@pytest.mark.parametrize("content,words", [
    ('{"lr": 1e-3, "epochz": 3}', "unknown setting(s) 'epochz'"),
    ('{"settings": {"hidden": "wide"}}', "--hidden must be a list of positive integers"),
    ('{"lr": NaN}', "not valid JSON"),
    ("[1, 2]", "expected an object of settings"),
])
def test_config_file_errors_name_the_key(tmp_path, capsys, content, words):
    f = tmp_path / "c.json"
    f.write_text(content)
    code = cli.main(["train", "--config", str(f), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code in (2, 3) and err.startswith("error: ") and words in err, err


def test_config_and_preset_together_are_refused(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text("{}")
    assert cli.main(["train", "--config", str(f), "--preset", "mission", "--out", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err


def test_traced_hyperparameters_come_from_the_vmapped_fields():
    """stepconfig.hyper fills train.Hyper from the RunConfig fields of the same names: a new
    sweepable float is its field plus its use (README, "Adding a setting")."""
    from svhn_jax.step import train

    assert set(train.Hyper._fields) <= set(config.VMAPPED)
    c = config.make(lr=2e-3, reg=5e-4, smoothing=0.1, dropout=0.2, input_dropout=0.05)
    assert [float(v) for v in stepconfig.hyper(c)] == pytest.approx([2e-3, 5e-4, 0.1, 0.2, 0.05])
    stacked = stepconfig.hypers([c, c.replace(lr=1e-2)])
    assert stacked.lr.shape == (2,) and float(stacked.lr[1]) == pytest.approx(1e-2)

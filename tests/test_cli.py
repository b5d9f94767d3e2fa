"""The `svhn-jax` command line itself: its version, its argument errors (one line each,
for every flag of every subcommand, generated from the parser), its help texts and
the console summary of a run. Parsing alone never starts a command: these tests
touch neither the network nor JAX, but the last one."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

import svhn_jax
from svhn_jax import cli, config, data
from svhn_jax.tune import sweep as tune

ROOT = Path(__file__).resolve().parents[1]
PARSER = cli.build_parser()
COMMANDS = PARSER._subparsers._group_actions[0].choices    # name -> its parser
# a value each subcommand's required flags accept (parsing only: nothing runs)
REQUIRED = {"evaluate": ["--run", "R"], "lr-find": ["--out", "L"], "prepare": ["--mat-dir", "M"]}


def _parse(capsys, argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of parsing argv; the command is never run."""
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _options(command: str):
    """The command's long options but --help: (flag, action)."""
    return [(o, a) for a in COMMANDS[command]._actions for o in a.option_strings
            if o.startswith("--") and o != "--help"]


def _takes_value(action) -> bool:
    return action.nargs != 0


# ------------------------------------------------------------------ version


def test_version_is_one_number_everywhere(capsys):
    """pyproject.toml, svhn_jax.__version__, `svhn-jax --version` and the README's
    "this release" agree."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert svhn_jax.__version__ == version
    code, out, err = _parse(capsys, ["--version"])
    assert code == 0 and out.strip() == f"svhn-jax {version}" and err == ""
    stated = re.findall(r"This is release (\d+\.\d+\.\d+)", (ROOT / "README.md").read_text())
    assert stated == [version]


# ---------------------------------------------------------- argument errors


def _bad_value(action) -> str | None:
    """A value that action's own parsing refuses, or None when it takes any string."""
    if action.choices:
        return "bogus"
    if action.type not in (None, str):
        return "1.5x"      # neither an integer, nor a number, nor a list of sizes
    return None   # any string parses; what it names is checked later (LATE_ERRORS)


def _argument_errors(command: str):
    """(case name, argv) for every error argparse can see in `command`'s arguments."""
    base = [command, *REQUIRED.get(command, [])]
    yield "unknown flag", [*base, "--bogus"]
    yield "stray word", [*base, "bogus"]
    for flag, action in _options(command):
        if len(flag) > 4:   # an abbreviation: every prefix is refused, the one a character short too
            yield f"abbreviated {flag}", [*base, flag[:-1]] + (["1"] if _takes_value(action) else [])
        if _takes_value(action):
            yield f"{flag} without its value", [*base, flag]
            bad = _bad_value(action)
            if bad is not None:
                yield f"{flag} {bad}", [*base, flag, bad]
        else:
            yield f"{flag}=value", [*base, f"{flag}=1"]
    for i in range(0, len(REQUIRED.get(command, [])), 2):
        yield f"without {REQUIRED[command][i]}", [command]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_argument_error_is_one_line(capsys, command):
    cases = dict(_argument_errors(command))
    assert len(cases) > 3
    for case, argv in cases.items():
        code, out, err = _parse(capsys, argv)
        assert code == 2 and out == "", (case, argv, out)
        assert err.startswith("error: ") and err.count("\n") == 1, (case, argv, err)
        assert "usage" not in err, (case, err)
        assert f"svhn-jax {command} --help" in err, (case, err)   # where the usage is


def test_abbreviations_are_refused_and_typos_get_a_suggestion(capsys):
    for argv, suggestion in [(["train", "--epoch", "2"], "--epochs"),
                             (["train", "--lerning-rate", "0.1"], "--lr"),
                             (["train", "--batch-size", "32"], "--batch"),
                             (["sweep", "--out", "S", "--optimiser", "adam"], "--optimizer"),
                             (["bench", "--mode", "none"], "--modes"),
                             (["gradcheck", "--hiden", "8"], "--hidden")]:
        code, _, err = _parse(capsys, argv)
        assert code == 2 and f"did you mean {suggestion}?" in err, (argv, err)
    # a suggestion names only the subcommand's own flags: lr-find has no --lr
    code, _, err = _parse(capsys, ["lr-find", "--out", "L", "--learning-rate", "0.1"])
    assert code == 2 and "did you mean" not in err and "--learning-rate" in err
    # nothing close: no suggestion
    for word in ("--zzzzzz", "--bogus"):
        code, _, err = _parse(capsys, ["train", word])
        assert code == 2 and "did you mean" not in err, err


def test_help_alone_prints_the_usage(capsys):
    for command in COMMANDS:
        code, out, err = _parse(capsys, [command, "--help"])
        assert code == 0 and out.startswith(f"usage: svhn-jax {command}") and err == ""


# Errors found after parsing, one or more per subcommand: each is one line too. None of
# them gets past its checks, so nothing is trained, downloaded or prepared.
LATE_ERRORS = {
    "train without --out": ["train", "--data", "synthetic"],
    "sweep without --out or --resume": ["sweep", "--data", "synthetic"],
    "sweep --resume with settings": ["sweep", "--resume", "{tmp}/s", "--lr", "0.1"],
    "sweep --resume of a folder that is no sweep": ["sweep", "--resume", "{tmp}"],
    "train --lr 0": ["train", "--data", "synthetic", "--out", "{tmp}/r", "--lr", "0"],
    "train --resume with settings": ["train", "--resume", "{tmp}/r", "--lr", "0.1"],
    "train, svhn not prepared": ["train", "--out", "{tmp}/r", "--data-dir", "{tmp}/no_tfds"],
    "evaluate a folder that is no run": ["evaluate", "--run", "{tmp}"],
    "sweep --lr 0:1:log:3": ["sweep", "--data", "synthetic", "--out", "{tmp}/s", "--lr", "0:1:log:3"],
    "sweep --epochs x": ["sweep", "--data", "synthetic", "--out", "{tmp}/s", "--epochs", "x"],
    "sweep --batch 0": ["sweep", "--data", "synthetic", "--out", "{tmp}/s", "--batch", "0"],
    "lr-find --batch 0": ["lr-find", "--data", "synthetic", "--out", "{tmp}/l", "--batch", "0"],
    "gradcheck --batch 1": ["gradcheck", "--batch", "1"],
    "bench --modes bogus": ["bench", "--modes", "bogus"],
    "bench --epochs 0": ["bench", "--epochs", "0"],
    "prepare from a folder without .mat files": ["prepare", "--mat-dir", "{tmp}", "--data-dir", "{tmp}/t"],
}


# every setting whose value must be one of a list, on every command that takes it
LATE_ERRORS.update({
    f"{command} --{name} bogus": [command, "--data-dir", "{tmp}/no_tfds", "--out", "{tmp}/o",
                                 "--" + name.replace("_", "-"), "bogus"]
    for name, f in config.FIELDS.items() if f.metadata["choices"]
    for command in f.metadata["commands"]})


@pytest.mark.parametrize("case", list(LATE_ERRORS))
def test_errors_after_parsing_are_one_line(tmp_path, capsys, case):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in LATE_ERRORS[case]]
    code = cli.main(argv)
    out = capsys.readouterr()
    assert code in (2, 3) and out.out == "", (case, out)
    assert out.err.startswith("error: ") and out.err.count("\n") == 1, (case, out.err)


def test_evaluate_without_svhn_suggests_what_makes_sense_for_scoring(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(
        {"settings": config.to_json(config.make(data="synthetic")), "derived": {}}))
    code = cli.main(["evaluate", "--run", str(run), "--data", "svhn", "--data-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "not prepared" in err
    assert "svhn-jax prepare --mat-dir" in err and "drop --data" in err
    assert "--download" not in err and "synthetic" not in err


# -------------------------------------------------------------------- help


def _help_of(command: str, flag: str) -> str:
    """The help text of one flag as --help prints it (before wrapping)."""
    p = COMMANDS[command]
    action = next(a for a in p._actions if flag in a.option_strings)
    return p._get_formatter()._expand_help(action)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_has_help_that_shows_its_default(command):
    for flag, action in _options(command):
        assert action.help, (command, flag)
        d = action.default
        if d is None or d is False:
            continue
        shown = ",".join(map(str, d)) if isinstance(d, tuple) else str(d)
        text = _help_of(command, flag)
        assert "default" in text and (shown in text or "default: all" in text), (command, flag, text)


def test_sweep_help_offers_each_setting_a_form_it_reads():
    """The example of a list and a range in each sweepable flag's help parses, as that
    setting's kind, into values the setting accepts (no float range for an integer)."""
    for name in config.SWEEPABLE:
        text = _help_of("sweep", "--" + name.replace("_", "-"))
        examples = re.findall(r"like (\S+?)(?:[;),]? |[;)]?$)", text)
        for example in examples:
            values = tune.parse_values(name, example)
            points = tune.expand({name: values})
            for p in points:
                if config.kind(name) == "int":
                    assert type(p[name]) is int, (name, example)
                # (a schedule under which warm-up and decay settings take effect)
                config.make(**{"schedule": "warmup-step", **p})
        if config.kind(name) == "int":
            assert examples and "1e-" not in text, (name, text)


def test_preset_help_shows_what_each_preset_sets():
    text = _help_of("train", "--preset")
    for name, values in config.PRESETS.items():
        part = text[text.index(f"{name} ="):]
        part = part[:part.index(";")] if ";" in part else part
        words = part.split()
        for k, v in values.items():
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                assert (flag if v else "--no-" + k.replace("_", "-")) in words, (name, k)
            else:
                shown = words[words.index(flag) + 1]
                given = cli.build_parser().parse_args(["train", flag, shown])
                assert config.make(**{**values, k: getattr(given, k)}) == config.make(**values), \
                    (name, k, shown)


def test_batchnorm_help_names_the_choices_it_accepts():
    text = _help_of("train", "--batchnorm")
    offered = re.search(r"one of ([a-z, ]+)", text).group(1).strip().split(", ")
    assert offered == list(config.BATCHNORM)
    for alias, meaning in re.findall(r"(\w+) = (\w+)", text):
        assert config.make(batchnorm=alias).batchnorm == meaning


# ----------------------------------------------------------- a run's summary


def test_a_checked_run_ends_with_one_line_about_its_checks(tmp_path, capsys):
    X, y = data.synthetic(300, seed=0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    out = tmp_path / "r"
    assert cli.main(["train", "--data", str(tmp_path / "d.npz"), "--out", str(out), "--hidden", "8",
                     "--epochs", "1", "--batch", "32", "--gradcheck-every", "2", "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    lines = [l for l in capsys.readouterr().out.splitlines() if "gradient checks" in l]
    # 7 steps, checked at 0, 2, 4, 6, and the epoch's end in eval mode
    assert m["gradchecks"] == 5 and m["gradchecks_eval"] == 1 and len(lines) == 1
    assert lines[0].startswith(f"5 gradient checks, {m['gradchecks_failed']} failed, "
                               f"{m['gradchecks_nonsmooth']} set aside")
    for key in ("manual_vs_autodiff", "directional_jvp", "directional_fd"):
        assert f"{m['gradcheck_max_' + key]:.1e}" in lines[0], key
    assert f"tolerance {m['gradcheck_tolerance']:.1e}" in lines[0]

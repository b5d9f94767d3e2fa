"""Command-line flags built from the RunConfig fields, and the RunConfig of a command
line: the CLI holds no second copy of the settings. No JAX here.

    Parser         argparse with one-line errors (`error: ...`, exit 2; the usage is
                   --help's), no abbreviations, and "did you mean" for a mistyped flag
    add_settings   one flag per RunConfig field a command takes, with its help
    make_config    the RunConfig of a command line
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys

from . import config, errors

# Other libraries' names for settings: a user who types one is pointed to ours.
ALIASES = {"--learning-rate": "--lr", "--weight-decay": "--reg", "--l2": "--reg",
           "--batch-size": "--batch", "--num-epochs": "--epochs", "--hidden-sizes": "--hidden",
           "--hidden-size": "--hidden", "--optim": "--optimizer", "--random-seed": "--seed"}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names it or
    there is none to name (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or "default" in text \
                or not action.option_strings:
            return text
        shown = ",".join(map(str, d)) if isinstance(d, (tuple, list)) else d
        return f"{text} (default {shown})".replace("%", "%%").lstrip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose every error is one line on stderr, `error: ...` (exit
    code 2), the usage being what --help prints. Abbreviations are refused (--epoch is
    not --epochs: a typo must not pass), and an unknown flag is answered with the
    closest of this (sub)command's own flags. Subparsers are Parsers too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {message} ({self.prog} --help lists what it takes)", file=sys.stderr)
        sys.exit(errors.EXIT_USAGE)

    def parse_known_args(self, args=None, namespace=None):
        # A subcommand's parser sees its own unknown flags here, before its caller does.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self.suggestion(extras)}")
        return namespace, extras

    def suggestion(self, extras) -> str:
        """'; did you mean --lr?' for the first unknown flag that resembles one of ours."""
        ours = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        known = {**{o[2:]: o for o in ours}, **{k[2:]: v for k, v in ALIASES.items() if v in ours}}
        for word in extras:
            if word.startswith("--"):
                close = difflib.get_close_matches(word[2:].split("=")[0], known, n=1, cutoff=0.75)
                if close:
                    return f"; did you mean {known[close[0]]}?"
        return ""


def int_list(text: str) -> tuple[int, ...]:
    """'128' or '512,256' -> (128,) or (512, 256)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,256, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return values



def number(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
                + (" (lists and ranges of values are for svhn-jax sweep)" if "," in text else ""))
    parse.__name__ = kind.__name__
    return parse


_PARSERS = {"int": number(int), "float": number(float), "tuple": int_list, "str": str}


class Refused(argparse.Action):
    """A flag this subcommand knows and refuses, with the reason (a flag of another
    subcommand that cannot take effect here): one `error:` line, like any other."""

    def __init__(self, option_strings, dest, reason: str, **kwargs):
        self.reason = reason
        super().__init__(option_strings, dest, nargs="?", default=None,
                         help=f"not here: {reason}", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.reason}")


def add_settings(p, command: str, *, lists: bool = False) -> None:
    """One flag per RunConfig field that `command` takes; every default is None,
    meaning "from --config, the preset, or the field's default". With `lists`, the
    sweepable fields take comma-separated lists or LO:HI:log|lin:N ranges."""
    g = p.add_argument_group("settings (override --config and --preset)" if command == config.TRAIN
                             else "settings (override --preset)")
    for name, f in config.FIELDS.items():
        m = f.metadata
        flag = "--" + name.replace("_", "-")
        if command in m["refused"]:
            g.add_argument(flag, action=Refused, reason=m["refused"][command])
        if command not in m["commands"]:
            continue
        kind = config.kind(name)
        extra = [f"one of {', '.join(m['choices'])}"] if m["choices"] else []
        if name == "batchnorm":
            extra[0] += " (" + ", ".join(f"{a} = {v}" for a, v in config.BATCHNORM_ALIASES.items()) + ")"
        if f.default is not None:
            extra.append(f"default {_show(f.default)}")
        if lists and m["sweep"]:
            extra.append(_LIST_HELP[kind])
        help = m["help"] + (f" ({'; '.join(extra)})" if extra else "")
        if kind == "bool":
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif lists and m["sweep"]:
            g.add_argument(flag, dest=name, metavar="LIST", help=help)
        else:
            g.add_argument(flag, dest=name, type=_PARSERS[kind], metavar=m["metavar"], help=help)
    p.add_argument("--preset", choices=tuple(config.PRESETS), help=preset_help())


# What a sweepable setting takes, by kind (tune.parse_values reads these forms)
_LIST_HELP = {"float": "a list like 1e-3,1e-2 or a range like 1e-4:1e-1:log:8",
              "int": "a list like 2,4 or a range of integers like 2:8:lin:4",
              "str": "a comma-separated list", "bool": "a comma-separated list of true, false",
              "tuple": "a comma-separated list"}


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else f"{v:g}" if isinstance(v, float) else str(v)


def _as_flag(name: str, v) -> str:
    flag = name.replace("_", "-")
    return (f"--{flag}" if v else f"--no-{flag}") if isinstance(v, bool) else f"--{flag} {_show(v)}"


def preset_help() -> str:
    """What each preset sets, as the flags that set it."""
    return "tuned settings over the defaults: " + "; ".join(
        f"{name} = " + " ".join(_as_flag(k, v) for k, v in values.items())
        for name, values in config.PRESETS.items())


def given_settings(args, command: str) -> dict:
    return {n: getattr(args, n) for n, f in config.FIELDS.items()
            if command in f.metadata["commands"] and getattr(args, n, None) is not None}


def make_config(args, command: str):
    """The RunConfig of a command line: --config FILE or --preset, then the flags."""
    base = None
    if getattr(args, "config", None):
        if args.preset:
            raise errors.SvhnJaxError("pass --config or --preset, not both: the file already "
                                      "holds every setting")
        base = config.read_file(args.config)
    return config.make(args.preset, base=base, **given_settings(args, command))


# ------------------------------------------------------------ several processes

ENV = ("SVHN_JAX_COORDINATOR", "SVHN_JAX_NUM_PROCESSES", "SVHN_JAX_PROCESS_ID")


def process_settings(coordinator=None, num_processes=None, process_id=None, environ=None):
    """(coordinator "HOST:PORT", num_processes, process_id) from the arguments or,
    where they are None, the environment variables in ENV; None when neither
    names any of them (a single process)."""
    environ = os.environ if environ is None else environ
    given = [v if v is not None else environ.get(k) for v, k in
             zip((coordinator, num_processes, process_id), ENV)]
    if all(v is None for v in given):
        return None
    flags = ("--coordinator", "--num-processes", "--process-id")
    missing = [f"{f} (or {k})" for v, f, k in zip(given, flags, ENV) if v is None]
    if missing:
        raise errors.SvhnJaxError(f"several processes need all three settings; missing {', '.join(missing)}")
    coordinator, num, pid = given
    if not re.fullmatch(r"[^\s:]+:\d+", str(coordinator)):
        raise errors.SvhnJaxError(f"--coordinator must be HOST:PORT (process 0's address, e.g. "
                           f"10.0.0.1:1234), got {coordinator!r}")
    try:
        num, pid = int(num), int(pid)
    except (TypeError, ValueError):
        raise errors.SvhnJaxError(f"--num-processes and --process-id must be integers, got "
                           f"{num!r} and {pid!r}") from None
    if num < 1 or not 0 <= pid < num:
        raise errors.SvhnJaxError(f"--process-id must be in [0, {num - 1}] with --num-processes {num}, "
                           f"got {pid}")
    return str(coordinator), num, pid

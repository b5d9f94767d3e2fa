"""Command-line flags built from the RunConfig fields, and the RunConfig of a command
line: the CLI holds no second copy of the settings. No JAX here."""

from __future__ import annotations

import argparse

from . import config, errors


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
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}")
    parse.__name__ = kind.__name__
    return parse


_PARSERS = {"int": number(int), "float": number(float), "tuple": int_list, "str": str}


def add_settings(p, command: str, *, lists: bool = False) -> None:
    """One flag per RunConfig field that `command` takes; every default is None,
    meaning "from --config, the preset, or the field's default". With `lists`, the
    sweepable fields take comma-separated lists or LO:HI:log|lin:N ranges."""
    g = p.add_argument_group("settings (override --config and --preset)" if command == config.TRAIN
                             else "settings (override --preset)")
    for name, f in config.FIELDS.items():
        m = f.metadata
        if command not in m["commands"]:
            continue
        kind = config.kind(name)
        extra = [f"one of {', '.join(m['choices'])}"] if m["choices"] else []
        if f.default is not None:
            extra.append(f"default {','.join(map(str, f.default)) if kind == 'tuple' else f.default}")
        help = m["help"] + (f" ({'; '.join(extra)})" if extra else "")
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif lists and m["sweep"]:
            g.add_argument(flag, dest=name, metavar="LIST", help=help + "; a list like 1e-3,1e-2 "
                           "or a range like 1e-4:1e-1:log:8" * (kind in ("int", "float")))
        else:
            g.add_argument(flag, dest=name, type=_PARSERS[kind], metavar=m["metavar"], help=help)
    p.add_argument("--preset", choices=tuple(config.PRESETS), help="a tuned set of settings")


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

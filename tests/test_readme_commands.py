"""Every command line in the README runs (tests/test_readme.py runs its Python block).

A command line is a line of a ```bash block, or an inline code span that starts with
`svhn-jax `, `python scripts/`, `JAX_NUM_CPU_DEVICES=N ` or `pip install` and has
arguments (`svhn-jax train` alone names a command; it is not a command line). Each is
handled by the first rule that applies, and one that no rule covers fails the test:

  environment  venv, `pip install -e ".[EXTRA]"` (the extra must exist in
               pyproject.toml) and `python -m pytest -q` (the suite itself, as .ci/run
               runs it)
  elsewhere    the two-process example (--coordinator localhost:PORT, with &):
               tests/test_parallel_runs.py runs that README block as written
  synopsis     a line with a placeholder (an upper-case word: D, DIR, RUN, N, FILE), an
               optional part [...] or an elision ...; or a coordinator on another
               machine: every flag it names must be a flag of its command (its --help);
               it is parsed, not run
  measure      `svhn-jax bench`: a timing, whose every mode tests/test_bench.py and
               tests/test_bench_devices.py run; here its arguments are parsed and
               checked by the bench's own checks (bench.parse_modes, bench.check_args),
               which is all a tiny run would add (it costs a minute of the suite);
               `python scripts/bench_compare.py` and `python scripts/mutate.py`
               (minutes each): their arguments are parsed by the script's own parser;
               tests/test_bench_compare.py and tests/test_mutate.py run them small
  run          everything else runs for real, here, in README order, downloads and the
               slice recipe first; a command that reads a run folder (--run, --resume,
               --config RUN/config.json) waits for the command that writes it, or, when
               none does (runs/a), the folder is made first by a one-epoch run

The runs happen in a scratch folder laid out like a checkout: the 8k slice beside it
(data.EIGHT_K_SLICE) does not exist until the README's own recipe builds it (svhn-jax
download from a local fake server, then scripts/make_slice.py on the fake
test_32x32.mat it serves: the official layout, random images).
`--data svhn` finds SVHN prepared from the same fake files in $TFDS_DATA_DIR. Nothing
reaches the network: every connection but to the loopback is refused.

Sizes are shrunk mechanically, and nothing else is changed (SIZES): a size flag the
command takes is set to the small value, given or not; `--seeds A-B` keeps its first
two seeds; `--synthetic-n` is capped; figures are drawn at DPI dots per inch. An --out
that an earlier command wrote is removed first. A command that asks for several devices
(`--devices 2`, `1,2,4`) without saying how many CPU devices to make runs with
JAX_NUM_CPU_DEVICES set to the largest. Commands with JAX_NUM_CPU_DEVICES, `svhn-jax
gradcheck` (which trains nothing: it compiles its checks) and scripts/peak_rss.py (which
runs its command as a child) run in subprocesses started first, alongside the others, which
run in this process and share compilations. Every run must exit 0.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import http.server
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from svhn_jax import cli, data
from svhn_jax.data import fetch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PREFIXES = ("svhn-jax ", "python scripts/", "pip install")
TIMED_SCRIPTS = ("python scripts/bench_compare.py", "python scripts/mutate.py")
ENV = re.compile(r"^JAX_NUM_CPU_DEVICES=(\d+) ")
PLACEHOLDER = re.compile(r"(^|[\s=,])([A-Z][A-Z_]*)(?=$|[\s,.\]])")

# size flag -> the value every command that takes the flag runs with
SIZES = {"--epochs": "1", "--steps": "5", "--n": "1024", "--eager-steps": "2", "--repeats": "1",
         "--in-dim": "12"}
SYNTHETIC_N = 2000       # cap of --synthetic-n; --data synthetic gets it when it names none
DPI = 30                 # of every figure (plots.base.DPI; tests/test_plots.py draws them at 60)
FAKE_SIZES = {"train": 600, "test": 1100, "extra": 60}   # images in the served .mat files


# ---------------------------------------------------------------- extraction


def command_lines(text: str) -> list[str]:
    """Every command line of the README, in order, wrapped inline spans joined, each once."""
    lines = []
    for m in re.finditer(r"```(\w*)\n(.*?)```|`([^`]+)`", text, re.S):
        lang, body, span = m.groups()
        if span is None:
            if lang == "bash":
                lines += [ln.strip() for ln in body.splitlines() if ln.strip()]
            elif lang == "":     # the command summary: a synopsis of every subcommand
                lines += [ln.strip() for ln in body.splitlines() if ln.strip().startswith("svhn-jax")]
            continue
        span = " ".join(span.split())
        starts = ENV.sub("", span)
        if starts.startswith(PREFIXES) and len(span.split()) > (2 if starts.startswith("svhn-jax") else 1):
            lines.append(span)
    return list(dict.fromkeys(lines))   # a line shown twice runs once


def _parts(line: str) -> list[str]:
    return [p.strip() for p in line.split("&&")]


def rule(line: str) -> str:
    if all(_environment(p) for p in _parts(line)):
        return "environment"
    runs = " && ".join(_runnable(line))
    if "--coordinator localhost:" in runs and ENV.match(runs):
        return "elsewhere"
    if PLACEHOLDER.search(runs) or "[" in runs or "..." in runs or "--coordinator" in runs:
        return "synopsis"
    if ENV.sub("", runs).startswith(("svhn-jax bench ",) + TIMED_SCRIPTS):
        return "measure"
    return "run"


def _environment(part: str) -> bool:
    return part.startswith(("python3 -m venv", ". .venv/bin/activate", "pip install ",
                            "python -m pytest"))


# --------------------------------------------------------------- the checks


def _command(words: list[str]) -> tuple[str, list[str]]:
    """('svhn-jax train' or 'scripts/x.py', the arguments) of a command's words."""
    if words[0] == "svhn-jax":
        return f"svhn-jax {words[1]}", words[2:]
    assert words[0] == "python" and words[1].startswith("scripts/"), words
    return words[1], words[2:]


def _call(command: str, args: list[str]) -> int:
    """Run a command in this process -> its exit code."""
    if command == "scripts/peak_rss.py":   # it runs another command as its child
        return runpy.run_path(str(ROOT / command))["main"](args)
    argv = sys.argv
    try:
        if command.startswith("svhn-jax"):
            return cli.main([*command.split()[1:], *args])
        sys.argv = [str(ROOT / command), *args]
        runpy.run_path(str(ROOT / command), run_name="__main__")
        return 0
    except SystemExit as e:
        return 0 if e.code is None else e.code
    finally:
        sys.argv = argv


@functools.cache
def flags_of(command: str) -> frozenset:
    """The flags `command --help` lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _call(command, ["--help"]) == 0, command
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))


def check_synopsis(line: str) -> None:
    """Every flag the line names is one its command takes (every command, for
    `svhn-jax COMMAND`)."""
    words = ENV.sub("", line).replace("[", " ").replace("]", " ").replace("|", " ").split()
    command, args = _command(words)
    commands = [command]
    if command == "svhn-jax COMMAND":
        commands = [f"svhn-jax {c}" for c in cli.build_parser()._subparsers._group_actions[0].choices]
    named = {w.split("=")[0] for w in args if w.startswith("--")}
    for command in commands:
        unknown = named - flags_of(command)
        assert not unknown, f"{line!r} names flags {command} does not take: {sorted(unknown)}"


def check_measure(line: str) -> None:
    """Parse a bench line and run the bench's own argument checks (what cmd_bench does
    before it times anything); parse a mutate.py line."""
    from svhn_jax import bench

    if line.startswith(TIMED_SCRIPTS):
        words = shlex.split(line)
        spec = importlib.util.spec_from_file_location("timed", ROOT / words[1])
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.build_parser().parse_args(words[2:])
        return

    args = cli.build_parser().parse_args(shlex.split(ENV.sub("", line))[1:])
    assert bench.parse_modes(args.modes) is not None
    bench.check_args(args.hidden, args.batch, args.epochs, args.n, args.eager_steps, args.gradcheck_every)
    env = ENV.match(line)
    if env:   # the devices it asks for are the ones it makes
        assert devices_needed(shlex.split(line)) <= int(env.group(1)), line


def check_environment(part: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in re.findall(r'"\.\[(\w+)\]"', part):
        assert extra in extras, part
    if part.startswith("python -m pytest"):
        assert part in (ROOT / ".ci" / "run").read_text(), part


def shrink(command: str, args: list[str]) -> list[str]:
    """The arguments with every size flag `command` takes set small (SIZES)."""
    takes, out, i = flags_of(command), [], 0
    while i < len(args):
        flag = args[i]
        if flag in SIZES and flag in takes:
            i += 2
        elif flag == "--seeds":
            first = int(re.match(r"\d+", args[i + 1]).group())
            out += [flag, f"{first}-{first + 1}"]
            i += 2
        elif flag == "--synthetic-n":
            out += [flag, str(min(int(args[i + 1]), SYNTHETIC_N))]
            i += 2
        else:
            out.append(flag)
            i += 1
    if "synthetic" in out and "--synthetic-n" not in out and "--synthetic-n" in takes:
        out += ["--synthetic-n", str(SYNTHETIC_N)]
    return out + [w for f, v in SIZES.items() if f in takes for w in (f, v)]


def shrink_all(command: str, args: list[str]) -> list[str]:
    """shrink(), also inside the command that peak_rss.py runs."""
    if command == "scripts/peak_rss.py":
        inner, inner_args = _command(args)
        return [*args[:len(args) - len(inner_args)], *shrink(inner, inner_args)]
    return shrink(command, args)


def devices_needed(args: list[str]) -> int:
    if "--devices" not in args:
        return 1
    value = args[args.index("--devices") + 1]
    return max((int(v) for v in value.split(",") if v.isdigit()), default=1)


def _runnable(line: str) -> list[str]:
    """The parts of a line that run (not the environment's)."""
    return [p.rstrip(" &") for p in _parts(line) if not _environment(p)]


def _flag(line: str, flag: str) -> str | None:
    words = [w for p in _runnable(line) for w in shlex.split(ENV.sub("", p))]
    return words[words.index(flag) + 1] if flag in words else None


def _reads(line: str) -> Path | None:
    """The run folder a command reads (--run, --resume, --config RUN/config.json)."""
    for flag in ("--run", "--resume", "--config"):
        if (v := _flag(line, flag)) is not None:
            return Path(v).parent if v.endswith("config.json") else Path(v)
    return None


def order(lines: list[str]) -> list[str]:
    """Downloads and the slice recipe first, then README order, except that a command
    that reads a run comes after the command that writes it."""
    lines = sorted(lines, key=lambda l: not re.search(r"svhn-jax download|make_slice\.py", l))
    writer = {Path(_flag(l, "--out")): l for l in lines if _flag(l, "--out")}
    done: list[str] = []

    def place(line):
        if line not in done:
            if _reads(line) in writer:
                place(writer[_reads(line)])
            done.append(line)

    for line in lines:
        place(line)
    return done


# ----------------------------------------------------------- the scratch world


def _write_mat(path: Path, n: int, rng) -> None:
    """An official-layout .mat file: X uint8 (32, 32, 3, n), y (n, 1) in 1..10."""
    scipy.io.savemat(str(path), {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                 "y": (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]})


@pytest.fixture
def world(tmp_path, monkeypatch, no_internet):
    """A checkout's folder (cwd) with no ../shared beside it yet, a fake SVHN host on
    the loopback and $TFDS_DATA_DIR; the network refused."""
    served = tmp_path / "host"
    served.mkdir()
    rng = np.random.default_rng(0)
    for split, n in FAKE_SIZES.items():
        name = data.OFFICIAL[split][0]
        _write_mat(served / name, n, rng)
        monkeypatch.setitem(data.OFFICIAL, split, (name, (served / name).stat().st_size,
                                                   data.sha256_file(served / name)))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setattr(fetch, "BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
    checkout = tmp_path / "svhn_jax"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    yield checkout
    httpd.shutdown()
    httpd.server_close()


def _subprocess_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVHN_JAX_", "JAX_NUM_CPU"))}
    return dict(env, JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT))


def _start(command: str, args: list[str], devices: int):
    """(process, its output file): a command in a subprocess with `devices` CPU devices,
    in this world's folder."""
    exe = ([sys.executable, "-m", "svhn_jax.cli", command.split()[1]] if command.startswith("svhn-jax")
           else [sys.executable, str(ROOT / command)])
    log = tempfile.TemporaryFile("w+")   # not a pipe: a full pipe would stall the command
    return subprocess.Popen([*exe, *args], env=_subprocess_env(devices), stdout=log,
                            stderr=subprocess.STDOUT, text=True), log


# ------------------------------------------------------------------- the test


def test_command_lines_are_found_and_each_has_a_rule():
    text = README.read_text()
    lines = command_lines(text)
    rules = {line: rule(line) for line in lines}
    assert {"environment", "elsewhere", "synopsis", "measure", "run"} == set(rules.values())
    assert any(line.startswith("svhn-jax prepare") for line in lines)            # the summary
    assert any("make_slice.py" in line and rules[line] == "run" for line in lines)
    # the two-process block is run by tests/test_parallel_runs.py, read from the README
    two = [line for line in lines if rules[line] == "elsewhere"]
    block = re.search(r"two local processes.*?```bash\n(.*?)```", text, re.S).group(1)
    assert len(two) == 2 and all(line in block for line in two)
    assert "two local processes" in (ROOT / "tests" / "test_parallel_runs.py").read_text()


def _in_subprocess(part: str, args: list[str]) -> int:
    """The JAX_NUM_CPU_DEVICES a part runs with in a subprocess, or 0: in this process."""
    env = ENV.match(part)
    if env:
        return int(env.group(1))
    words = shlex.split(part)
    if devices_needed(args) > 1:
        return devices_needed(args)
    return 1 if words[:2] == ["svhn-jax", "gradcheck"] or words[1:2] == ["scripts/peak_rss.py"] else 0


def _finish(proc: subprocess.Popen, log) -> tuple[int, str]:
    """(exit code, output) of a subprocess of _start, killed after 300 s."""
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    with log:
        log.seek(0)
        return code, log.read()


def test_every_command_line_in_the_readme_runs(world, capsys, monkeypatch):
    from svhn_jax.plots import base

    monkeypatch.setattr(base, "DPI", DPI)
    lines = command_lines(README.read_text())
    for line in lines:
        for part in _parts(line):
            if _environment(part):
                check_environment(part)
        {"synopsis": check_synopsis, "measure": check_measure}.get(rule(line), lambda _: None)(line)
    parts = [(line, part, *_command(shlex.split(ENV.sub("", part))))
             for line in order([line for line in lines if rule(line) == "run"]) for part in _runnable(line)]
    parts = [(line, part, command, shrink_all(command, args)) for line, part, command, args in parts]
    background = [(part, _start(command, args, _in_subprocess(part, args)))
                  for _, part, command, args in parts if _in_subprocess(part, args)]
    written, failures = set(), []
    try:
        for line, part, command, args in parts:
            if _in_subprocess(part, args):
                continue
            run = _reads(line)
            if run is not None and run not in written and not run.exists():   # no command writes it
                assert cli.main(["train", "--data", data.EIGHT_K_SLICE, "--hidden", "8",
                                 "--epochs", "1", "--out", str(run), "--quiet"]) == 0
            out = Path(args[args.index("--out") + 1]) if "--out" in args else None
            if out is not None and out in written:
                shutil.rmtree(out, ignore_errors=True)
            code = _call(command, args)
            err = capsys.readouterr().err
            if code != 0:
                failures.append(f"{part}\n  exit {code}: {err[-2000:]}")
            written |= {out} if out is not None else set()
    finally:
        for part, (proc, log) in background:
            code, output = _finish(proc, log)
            if code != 0:
                failures.append(f"{part}\n  exit {code}: {output[-2000:]}")
    assert not failures, "\n".join(failures)
    # the recipe built the slice from the served test_32x32.mat: its first --n images
    X, y = data.read_mat(world.parent / "host" / "test_32x32.mat")
    n = int(SIZES["--n"])
    with np.load(data.EIGHT_K_SLICE) as s:
        np.testing.assert_array_equal(s["X"], X[:n])
        np.testing.assert_array_equal(s["y"], y[:n])
        np.testing.assert_array_equal(s["index"], np.arange(n))

"""Hyperparameter sweeps on validation, many configurations trained at once,
one final evaluation on test; and the learning-rate range test.

A sweep expands per-hyperparameter value lists (or ranges) into configurations,
by grid or random search. Configurations that differ only in learning rate, L2
strength and seed share every array shape, so they form one *group* and are
trained simultaneously: their train states are stacked along a leading axis and
one jax.vmap-ed, jit-compiled program trains them all (a GROUP job of `run.engine`,
spread over the devices by `step.mesh.placement`).
Groups differing in anything else (architecture, optimizer, batch size, epochs,
schedule, augmentation, preprocessing) run one after another.

Selection uses the validation split only; the test split is dropped right
after loading, and touched once, by the final run of the chosen configuration
(`launch.train_run`), whose folder `svhn-jax evaluate` understands.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from .. import __version__, atomic, config, data
from ..step import mesh as meshes
from ..step import settings as stepconfig, train
from ..step.evaluate import make_eval_set
from ..run import agree, engine, launch, processes, tblog
from ..run import folder as runfolder
from ..run import parts as rundata
from ..run.progress import Progress
from ..config import VMAPPED, RunConfig
from ..data import preprocess
from ..errors import SvhnJaxError
from ..nn import stepcheck


def parse_values(name: str, text: str) -> list | tuple:
    """'1e-3,1e-2' -> [0.001, 0.01]; '1e-4:1e-1:log:4' -> 4 log-spaced values.

    A range is returned as the tuple ("range", lo, hi, scale, n): grid search
    expands it to n points, random search samples it. Hidden sizes of several
    layers are written with 'x': --hidden 128,512x256.
    """
    if name not in config.SWEEPABLE:
        raise SvhnJaxError(f"cannot sweep {name}; sweepable: {', '.join(config.SWEEPABLE)}")
    kind = config.kind(name)
    text = str(text).strip()
    if kind in ("int", "float") and text.count(":") == 3:
        lo, hi, scale, n = text.split(":")
        try:
            lo, hi, n = float(lo), float(hi), int(n)
        except ValueError:
            raise SvhnJaxError(f"--{name} range must look like 1e-4:1e-1:log:8, got {text!r}")
        if scale not in ("log", "lin") or n < 1 or (scale == "log" and min(lo, hi) <= 0):
            raise SvhnJaxError(f"--{name} range {text!r}: scale must be log (positive ends) or lin, "
                               f"and the count at least 1")
        return ("range", lo, hi, scale, n)
    values = []
    for v in (p.strip() for p in text.split(",")):
        if not v:
            continue
        try:
            if kind == "tuple":
                values.append(tuple(int(h) for h in v.split("x")))
            elif kind == "int":
                values.append(int(float(v)) if "e" in v.lower() else int(v))
            elif kind == "float":
                values.append(float(v))
            elif kind == "bool":
                values.append({"true": True, "on": True, "false": False, "off": False}[v.lower()])
            else:
                values.append(v)
        except (ValueError, KeyError, OverflowError):
            raise SvhnJaxError(f"--{name}: cannot read {v!r} in {text!r}")
    if not values:
        raise SvhnJaxError(f"--{name} needs at least one value")
    return values


def _grid_points(spec, name=None):
    if isinstance(spec, tuple):
        _, lo, hi, scale, n = spec
        pts = np.geomspace(lo, hi, n) if scale == "log" else np.linspace(lo, hi, n)
        return [int(round(p)) if name and config.kind(name) == "int" else float(p) for p in pts]
    return list(spec)


def _sample(spec, rng, name):
    if isinstance(spec, tuple):
        _, lo, hi, scale, _ = spec
        v = math.exp(rng.uniform(math.log(lo), math.log(hi))) if scale == "log" else rng.uniform(lo, hi)
        return int(round(v)) if name and config.kind(name) == "int" else float(v)
    return spec[rng.integers(len(spec))]


def expand(axes: dict, *, search: str = "grid", trials: int = 10, seed: int = 0) -> list[dict]:
    """Configurations (dicts of the swept settings) from parsed axes."""
    names = list(axes)
    if search == "grid":
        return [dict(zip(names, vals)) for vals in itertools.product(*(_grid_points(axes[n], n) for n in names))]
    if search == "random":
        if trials < 1:
            raise SvhnJaxError(f"--trials must be at least 1, got {trials}")
        rng = np.random.default_rng(seed)
        return [{n: _sample(axes[n], rng, n) for n in names} for _ in range(trials)]
    raise SvhnJaxError(f"--search must be grid or random, got {search!r}")


def _group_key(c: RunConfig) -> str:
    """Configurations share a compiled group when they differ in vmapped settings only
    and have the same network (a dropout rate of 0 leaves its layer out)."""
    return json.dumps({k: v for k, v in config.to_json(c).items() if k not in VMAPPED}
                      | {"network": stepconfig.spec(c)}, sort_keys=True)


def _show(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _label(c: RunConfig, swept) -> str:
    return ", ".join(f"{k}={_show(getattr(c, k))}" for k in swept)


# ---------------------------------------------------------------------- sweep


def _device_data(parts: dict, c: RunConfig, place, cache: dict):
    """(training images, labels, validation set) on the placement, uint8, placed once
    per placement and shared by every group; and the preprocessing fitted for c, once
    per setting."""
    if place not in cache:
        X_tr, y_tr = parts["train"]
        cache[place] = (meshes.shard_rows(X_tr.reshape(len(X_tr), -1), y_tr, place),
                        meshes.replicate(make_eval_set(*parts["val"]), place))
    key = (c.preprocess, c.grayscale)
    if key not in cache:
        cache[key] = preprocess.fit(parts["train"][0], mode=c.preprocess, grayscale=c.grayscale)
    (X, y), val = cache[place]
    return X, y, val, cache[key]


def train_group(configs: list[RunConfig], parts: dict, cache: dict | None = None, *,
                folder: Path | None = None, resume: str = "") -> list[dict]:
    """Train configurations that differ only in vmapped settings (lr, reg, seed)
    together, as one GROUP job of the engine, spread over the devices (c.devices);
    return one result per configuration (history, best and final validation numbers,
    status). `cache` shares the data on the devices and fitted preprocessing between
    calls. With `folder`, the group checkpoints there (at every epoch's end and every
    --checkpoint-every steps) and starts from a checkpoint it finds there; `resume` is
    the command that continues it, for the message of a stop request."""
    c0, k = configs[0], len(configs)
    n = len(parts["train"][1])
    stepconfig.check_batch(c0, n)
    place = meshes.placement(k, c0.devices, batch=c0.batch, stacked=True)
    X, y, val, prep = _device_data(parts, c0, place, {} if cache is None else cache)
    cfg = stepconfig.step_config(c0, train.steps_per_epoch(n, c0.batch), prep)
    states = launch.initial_states(configs, cfg, preprocess.input_dim(prep), stacked=True)
    progs, step = (Progress(),) * k, 0
    if folder is not None and any(folder.glob("checkpoint*.npz")):
        states, progs, step = engine.load_checkpoint(folder, jax.eval_shape(lambda: {"state": states}), k)
    job = engine.Job(engine.GROUP, tuple(configs), cfg, place,
                     meshes.spread(stepconfig.hypers(configs), place), X, y, n, val,
                     checkpoints=folder, resume=resume, quiet=True)
    t0 = time.perf_counter()
    _, progs, _ = engine.run(job, meshes.spread(states, place), progs, step)
    group_seconds = time.perf_counter() - t0
    results = []
    for c, p in zip(configs, progs):
        last = p.history[-1] if p.history else {}
        r = {"history": list(p.history), "gradchecks": list(p.gradchecks),
             "best_val_acc": p.best_val_acc, "best_epoch": p.best_epoch, "status": p.status,
             "config": c, "final_val_loss": last.get("val_loss", float("nan")),
             "final_val_acc": last.get("val_acc", float("nan")),
             "final_train_loss": last.get("train_loss", float("nan")),
             "group_size": k, "group_seconds": group_seconds}
        if p.status != "completed":
            r[f"{p.status}_at_step"] = p.status_step
        results.append(r)
    return results


PLAN = "sweep.json"   # what a sweep was asked to do: svhn-jax sweep --resume reads it


@agree.lost_peers_reported()
def sweep(base: RunConfig, axes: dict, out, *, search="grid", trials=10, search_seed=0, final=True,
          final_on="train", overwrite=False, quiet=False, download=False) -> dict:
    """Run a sweep into folder `out`; returns the summary (also in out/results.json)."""
    out = Path(out)
    unknown = sorted(set(axes) - set(config.SWEEPABLE))
    if unknown:
        raise SvhnJaxError(f"cannot sweep {', '.join(unknown)}; sweepable: {', '.join(config.SWEEPABLE)}")
    if final_on not in ("train", "train+val"):
        raise SvhnJaxError(f"--final-on must be train or train+val, got {final_on!r}")
    plan = {"settings": config.to_json(base), "axes": {a: _axis_json(v) for a, v in axes.items()},
            "search": search, "trials": trials, "search_seed": search_seed, "final": final,
            "final_on": final_on}
    for point in expand(axes, search=search, trials=trials, seed=search_seed):   # errors first
        config.make(base=base, **point)
    main = processes.is_main_process()
    with agree.together("start"):
        if main:
            runfolder.check_run_dir(out, overwrite=overwrite)
        parts = rundata.load_split(base, download=download)
        if main:
            runfolder.ensure_run_dir(out, overwrite=overwrite)
            atomic.write_json(out / PLAN, plan)
    launch.same_everywhere(base, parts, len(parts["train"][1]), _hint(out))
    return _run(plan, out, parts, quiet=quiet, overwrite=overwrite)


@agree.lost_peers_reported()
def resume_sweep(out, *, quiet=False) -> dict:
    """Continue the sweep in folder `out`: finished groups are read back, an interrupted
    one continues from its checkpoint, the rest (and the final run) are trained."""
    out = Path(out)
    try:
        plan = json.loads((out / PLAN).read_text())
    except OSError:
        raise SvhnJaxError(f"{out} is not a sweep folder (no {PLAN}); pass the --out folder of a "
                           f"svhn-jax sweep") from None
    except ValueError as e:
        raise SvhnJaxError(f"{out / PLAN} is damaged ({e}); start the sweep again") from None
    done = out / "results.json"
    if done.exists():
        runfolder.say(f"{out} already completed; nothing to resume", quiet=quiet)
        return json.loads(done.read_text())
    with agree.together("resume"):
        base = config.from_json(plan["settings"], str(out / PLAN))
        parts = rundata.load_split(base)
    launch.same_everywhere(base, parts, len(parts["train"][1]), _hint(out))
    return _run(plan, out, parts, quiet=quiet, overwrite=False)


def _hint(out: Path) -> str:
    return f"The newest group checkpoint is intact; resume with: svhn-jax sweep --resume {out}"


def _axis_json(spec):
    if isinstance(spec, tuple):   # a range
        return {"range": list(spec[1:])}
    return {"values": [list(v) if isinstance(v, tuple) else v for v in spec]}


def _axis(name: str, spec: dict):
    if "range" in spec:
        return ("range", *spec["range"])
    return [tuple(v) if config.kind(name) == "tuple" else v for v in spec["values"]]


def _run(plan: dict, out: Path, parts: dict, *, quiet: bool, overwrite: bool) -> dict:
    """Train every group of the plan (reading back those a previous session finished),
    rank on validation, write the outputs, and retrain the best once for test."""
    base = config.from_json(plan["settings"], str(out / PLAN))
    axes = {a: _axis(a, spec) for a, spec in plan["axes"].items()}
    main = processes.is_main_process()
    points = expand(axes, search=plan["search"], trials=plan["trials"], seed=plan["search_seed"])
    configs = [config.make(base=base, **p) for p in points]
    parts.pop("test", None)   # selection sees train and validation only
    overlap = rundata.split_overlaps(parts, data.image_fingerprints(parts["train"][0]))
    if overlap["overlap_train_val"]:
        runfolder.say(f"warning: {overlap['overlap_train_val']} validation images also occur in the "
                      f"training part (duplicates in the data)", quiet=quiet)
    groups: dict[str, list[dict]] = {}
    for c in configs:
        groups.setdefault(_group_key(c), []).append(c)
    swept = [a for a in axes if len({_show(getattr(c, a)) for c in configs}) > 1] or list(axes)
    results, t0, cache = [], time.perf_counter(), {}
    for i, group in enumerate(groups.values()):
        folder = out / "groups" / f"g{i:03d}"
        if (folder / "results.json").exists():
            results += [_result_from_json(r) for r in json.loads((folder / "results.json").read_text())]
            continue
        if not quiet:
            runfolder.say(f"group {i + 1}/{len(groups)}: {len(group)} configuration(s) trained at once "
                          f"({_label(group[0], [a for a in swept if a not in VMAPPED]) or 'one shape'})",
                          quiet=False)
        done = train_group(group, parts, cache, folder=folder, resume=f"svhn-jax sweep --resume {out}")
        if main:   # its results stand for it now: its checkpoints are no longer needed
            atomic.write_json(folder / "results.json",
                              [dict(r, config=config.to_json(r["config"])) for r in done])
            for f in folder.glob("checkpoint*.npz"):
                f.unlink()
        results += done
    seconds = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == "completed"]
    if not ok:
        raise launch.Diverged("every configuration diverged; lower the learning rates")
    ok.sort(key=lambda r: (-r["best_val_acc"], r["final_val_loss"]))
    ranked = ok + [r for r in results if r["status"] != "completed"]
    rows = [{"rank": i + 1, **{a: _show(getattr(r["config"], a)) if a == "hidden" else getattr(r["config"], a)
                               for a in swept},
             "best_val_acc": r["best_val_acc"], "best_epoch": r["best_epoch"],
             "final_val_acc": r["final_val_acc"], "final_val_loss": r["final_val_loss"],
             "final_train_loss": r["final_train_loss"], "status": r["status"],
             "diverged_at_step": r.get("diverged_at_step", ""), "group_size": r["group_size"],
             **(stepcheck.summary(r["gradchecks"]) if base.gradcheck_every else {})}
            for i, r in enumerate(ranked)]
    summary = {"swept": swept, "search": plan["search"], "configurations": len(results),
               "groups": len(groups), "sweep_seconds": seconds, "vmapped_axes": list(VMAPPED),
               "results": rows,
               "best": {k: getattr(ranked[0]["config"], k) for k in sorted(set(axes) | set(VMAPPED))},
               "settings": _shared_settings(configs), "svhn_jax_version": __version__,
               **overlap}
    if main:
        _write_outputs(out, rows, ranked, swept, axes)
        if base.tensorboard:
            tblog.log_sweep(out / tblog.TB_DIR, [dict(r, config=config.to_json(r["config"])) for r in ranked])
    if plan["final"]:
        best = ranked[0]["config"].replace(train_on_val=(plan["final_on"] == "train+val"))
        runfolder.say(f"final: retraining the best configuration ({_label(best, swept)}) on "
                      f"{plan['final_on']} and evaluating once on test", quiet=quiet)
        summary["final"] = _final(best, out / "final", overwrite=overwrite, quiet=quiet)
        summary["final_run"] = str(out / "final")
    if main:
        atomic.write_json(out / "results.json", summary)
    return summary


def _shared_settings(configs) -> dict:
    """The settings every configuration of the sweep has in common (a swept one is absent)."""
    first, *rest = map(config.to_json, configs)
    return {k: v for k, v in first.items() if all(r[k] == v for r in rest)}


def _result_from_json(r: dict) -> dict:
    """A configuration's result as written by a previous session (strict JSON keeps
    undefined numbers as null: they are NaN again)."""
    nan = {k: float("nan") for k in ("final_val_loss", "final_val_acc", "final_train_loss")
           if r.get(k) is None}
    return dict(r, **nan, config=config.from_json(r["config"]))


def _final(best: RunConfig, run: Path, *, overwrite: bool, quiet: bool) -> dict:
    """The final run: continued when an earlier session of the sweep began it."""
    if any(run.glob("checkpoint*.npz")):
        return launch.resume_run(run, quiet=quiet)
    return launch.train_run(best, run, overwrite=overwrite or run.exists(), quiet=quiet)


def _write_outputs(out: Path, rows, ranked, swept, axes):
    from .. import plots

    runfolder.write_csv(out / "results.csv", rows)
    curves = [{"label": _label(r["config"], swept), "history": r["history"]} for r in ranked]
    plots.overlay_curves(curves, out / "curves.png")
    if "lr" in swept:
        others = [a for a in swept if a != "lr"]
        points = [{"lr": r["config"].lr, "val_loss": r["final_val_loss"], "val_acc": r["best_val_acc"],
                   "label": _label(r["config"], others) or "all", "diverged": r["status"] == "diverged"}
                  for r in ranked]
        plots.lr_sweep(points, out / "lr_sweep.png")
    if len(swept) == 2:
        a, b = swept
        fmt = lambda v: f"{v:g}" if isinstance(v, float) else _show(v)
        xs = sorted({fmt(getattr(r["config"], a)) for r in ranked}, key=_natural)
        ys = sorted({fmt(getattr(r["config"], b)) for r in ranked}, key=_natural)
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in ranked:
            if r["status"] == "completed":
                grid[ys.index(fmt(getattr(r["config"], b))), xs.index(fmt(getattr(r["config"], a)))] = r["best_val_acc"]
        plots.heatmap(grid, xs, ys, out / "heatmap.png", title="best validation accuracy",
                      xlabel=a, ylabel=b)


def _natural(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no results)"
    cols = list(rows[0])
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(widths[c]) for c in cols)]
    lines += ["  ".join(cell(r[c]).rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)

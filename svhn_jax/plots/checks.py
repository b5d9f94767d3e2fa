"""Gradient-check figures: `gradcheck` (the per-step check of a training run)
and `step_diffs` (hand vs jax.grad differences over steps); see the package
docstring for the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from . import base

# (record key, legend name, colour) of each error a check records
SERIES = (("manual_vs_autodiff", "hand vs jax.grad, every entry", "tab:green"),
          ("directional_jvp", "along v: vs jax.jvp", "tab:blue"),
          ("directional_fd", "along v: vs finite difference", "tab:purple"))
SET_ASIDE = "finite difference across a ReLU kink (not smooth along v): set aside"
# Up to this many checks a series is drawn point by point; beyond (a run checked at
# every step), each epoch's largest error, which keeps every failure in sight.
MAX_POINTS = 400
THINNED = " (largest of each epoch)"


def _smooth(record) -> bool:
    """A row's `smooth` flag, also as read back from CSV ('True'/'False'); rows
    without one (scripts' records) count."""
    v = record.get("smooth", True)
    return v.strip().lower() == "true" if isinstance(v, str) else bool(v)


def _counting(records, key: str, smooth: np.ndarray) -> np.ndarray:
    """bool (n,): the rows whose `key` error counts (present; directional_fd only where smooth)."""
    present = np.array([key in r for r in records], dtype=bool)
    return present & smooth if key == "directional_fd" else present


def gradcheck_summary(records, tolerances: dict) -> dict:
    """What the figure's title states: counts and, per series, the worst finite
    error over the checks that count (directional_fd only where smooth; None if
    there is none), as in `svhn_jax.nn.stepcheck.summary`.
    tolerances: {series key: tolerance}; a check fails when an error that counts
    exceeds its tolerance or is not finite."""
    records = list(records)
    smooth = np.array([_smooth(r) for r in records], dtype=bool)
    worst, failed = {}, np.zeros(len(records), dtype=bool)
    for key, _, _ in SERIES:
        if any(key in r for r in records):
            values, counts = base.column(records, key), _counting(records, key, smooth)
            finite = counts & ~np.isnan(values)
            worst[key] = float(values[finite].max()) if finite.any() else None
            failed |= counts & ~(values <= tolerances[key])
    return {"checks": len(records), "set_aside": int((~smooth).sum()), "failed": int(failed.sum()),
            "max": worst}


def gradcheck_figure(records, *, tol_fd=1e-6, tol_autodiff=1e-10, tol_jvp=None):
    """The `gradcheck` figure before it is written -> (Figure, gradcheck_summary)."""
    records = list(records)
    tols = {"manual_vs_autodiff": tol_autodiff, "directional_jvp": tol_fd if tol_jvp is None else tol_jvp,
            "directional_fd": tol_fd}
    s = gradcheck_summary(records, tols)
    steps = base.column(records, "step")
    steps = np.where(np.isnan(steps), np.arange(len(records)), steps)
    smooth = np.array([_smooth(r) for r in records], dtype=bool)
    fig, (ax,) = base.figure(8, 6)
    bad = np.zeros(len(records), dtype=bool)
    epochs = base.column(records, "epoch")
    for key, name, color in SERIES:
        if key not in s["max"]:
            continue
        values, counts = base.column(records, key), _counting(records, key, smooth)
        keep, thinned = _largest_per_epoch(values, epochs, counts)
        _log_series(ax, steps[keep], values[keep], name + THINNED * thinned, color)
        bad |= counts & np.isnan(values)
        aside = ~smooth & (key == "directional_fd")
        if aside.any():
            keep, thinned = _largest_per_epoch(values, epochs, aside)
            ax.plot(steps[keep], base.for_log(values[keep])[0], "D", mfc="none", mec="tab:gray", ms=7,
                    ls="none", label=SET_ASIDE + THINNED * thinned)
    base.markers_at_top(ax, steps[bad], label="NaN / inf error: a failure")
    used = sorted({tols[k] for k in s["max"]})
    if len(used) == 1:
        ax.axhline(used[0], color="k", ls="--", lw=1.2, label=f"tolerance {used[0]:.1e} (every series)")
    else:
        for key, _, color in SERIES:
            if key in s["max"]:
                ax.axhline(tols[key], color=color, ls="--", lw=1.2, label=f"tolerance {tols[key]:.1e}")
    names = {k: n for k, n, _ in SERIES}
    fmt = lambda v: "none" if v is None else f"{v:.1e}"
    lines = [f"gradient checks during training: {s['checks']} checks, {s['failed']} failed"
             + (f", {s['set_aside']} set aside" if s["set_aside"] else "")]
    lines += [f"{names[k]}: max {fmt(v)}" + (" over smooth checks" if k == "directional_fd" else "")
              + f" (tolerance {tols[k]:.1e})" for k, v in s["max"].items()]
    ax.set_title("\n".join(lines), fontsize="medium")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("relative error")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="major")
    # several long entries: below the plot, where they cannot hide a point
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return fig, s


def _largest_per_epoch(values, epochs, mask) -> tuple[np.ndarray, bool]:
    """(indices of the rows of `mask` to draw, whether thinned): every one up to
    MAX_POINTS; else the largest error of each epoch (NaN counts as largest), or of
    each of MAX_POINTS equal runs of rows when the rows have no epochs or too many."""
    rows = np.flatnonzero(mask)
    if len(rows) <= MAX_POINTS:
        return rows, False
    groups = epochs[rows]
    if np.isnan(groups).any() or len(np.unique(groups)) > MAX_POINTS:
        groups = np.arange(len(rows)) * MAX_POINTS // len(rows)
    worst = np.where(np.isnan(values[rows]), np.inf, values[rows])
    return np.array([rows[g][np.argmax(worst[g])] for g in (groups == u for u in np.unique(groups))]), True


def gradcheck(records, path, *, tol_fd=1e-6, tol_autodiff=1e-10, tol_jvp=None) -> Path:
    """Errors of the per-step gradient checks of a run, log y, with tolerances.

    records: rows of gradchecks.csv (`svhn_jax.nn.stepcheck.records`, or read
        back from the CSV): {"step", "manual_vs_autodiff", "directional_jvp"
        (optional), "directional_fd", "smooth" (optional, default true)};
        errors >= 0. Exact zeros are drawn at LOG_FLOOR as hollow circles;
        NaN/inf errors as red x at the top (failures). A finite difference
        that was not smooth along v is drawn as a grey diamond and does not
        count: neither in the title's maximum nor as a failure. Beyond
        MAX_POINTS checks a series shows each epoch's largest error.
    tol_fd, tol_autodiff, tol_jvp (default tol_fd): the tolerances, dashed lines.
    The title gives the number of checks, failures and set-aside checks and each
    series' maximum over the checks that count (`gradcheck_summary`).
    """
    records = list(records)
    if not records:
        return base.message(path, "no gradient checks recorded", "gradient checks")
    fig, _ = gradcheck_figure(records, tol_fd=tol_fd, tol_autodiff=tol_autodiff, tol_jvp=tol_jvp)
    return base.save(fig, path)


def step_diffs(records, path, *, tol=None) -> Path:
    """Hand-written vs jax.grad gradients over training steps (log y).

    records: list of {"step": int, "manual_vs_autodiff": float (relative error),
        "max_abs_diff": float (optional, max |hand - autodiff| over all entries)}.
    tol: optional tolerance for the relative error, drawn as a dashed line.
    Exact zeros are drawn at LOG_FLOOR as hollow markers (named in the legend).
    """
    records = list(records)
    if not records:
        return base.message(path, "no gradient differences recorded", "hand vs jax.grad")
    steps = base.column(records, "step")
    steps = np.where(np.isnan(steps), np.arange(len(records)), steps)
    fig, (ax,) = base.figure(7.5, 4.5)
    _log_series(ax, steps, base.column(records, "manual_vs_autodiff"),
                "relative error", "tab:green")
    if any("max_abs_diff" in r for r in records):
        _log_series(ax, steps, base.column(records, "max_abs_diff"),
                    "max |hand - jax.grad|", "tab:brown")
    if tol is not None:
        ax.axhline(float(tol), color="tab:green", ls="--", lw=1.2,
                   label=f"tolerance {float(tol):.0e}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("difference")
    ax.set_title("hand-derived vs jax.grad gradients during training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return base.save(fig, path)


def _log_series(ax, steps, raw, name, color):
    """Plot errors `raw` (n,) vs `steps` (n,) on a log axis; zeros hollow at LOG_FLOOR."""
    y, clipped = base.for_log(raw)
    # the line joins only the drawable points: a gap at every exact zero would
    # break it into fragments, and a dive to the floor would dwarf the real values
    shown = ~clipped & ~np.isnan(y)
    ax.plot(steps[shown], y[shown], "o-", color=color, ms=3, lw=1, label=name)
    if clipped.any():
        ax.plot(steps[clipped], y[clipped], "o", mfc="none", mec=color, ms=6, ls="none",
                label=f"{name}: exactly 0, drawn at {base.LOG_FLOOR:.0e}")



"""Training curves and learning-rate figures: `curves`, `overlay_curves`,
`lr_sweep`, `lr_find` (see the package docstring for the contract)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import SvhnJaxError
from . import base

def _best_epoch(epochs: np.ndarray, val_acc: np.ndarray):
    """(epoch, accuracy %) of the best validation accuracy, or None if all NaN."""
    if np.all(np.isnan(val_acc)):
        return None
    i = int(np.nanargmax(val_acc))
    return epochs[i], val_acc[i]


def curves(history, path_loss, path_acc) -> tuple[Path, Path]:
    """Loss and accuracy against epoch, as two PNGs.

    history: list of per-epoch dicts with `epoch` (1-based), `train_loss`,
        `val_loss`, `train_acc`, `val_acc` (fractions) and `lr`; any value may
        be missing or NaN (a diverged epoch: drawn as a gap plus an 'x' at the top).
    path_loss: PNG of train/val loss; a varying `lr` is drawn on a right axis.
    path_acc: PNG of train/val accuracy in percent.
    Both mark the epoch of the best validation accuracy.
    Returns (Path(path_loss), Path(path_acc)).
    """
    history = list(history)
    if not history:
        return (base.message(path_loss, "no epochs recorded", "loss"),
                base.message(path_acc, "no epochs recorded", "accuracy"))
    epochs = base.epochs_of(history)
    best = _best_epoch(epochs, base.percent(base.column(history, "val_acc")))
    return (_curves_panel(history, epochs, best, path_loss, "loss"),
            _curves_panel(history, epochs, best, path_acc, "acc"))


def _curves_panel(history, epochs, best, path, kind: str) -> Path:
    """One of the two `curves` figures; kind is 'loss' or 'acc'."""
    fig, (ax,) = base.figure(7, 4.5)
    style = base.line_style(len(epochs))
    for split, color in (("train", base.TRAIN_COLOR), ("val", base.VAL_COLOR)):
        y = base.column(history, f"{split}_{kind}")
        if kind == "acc":
            y = base.percent(y)
        ax.plot(epochs, y, color=color, label=split, **style)
    # an epoch is diverged when any of its losses is missing or non-finite
    losses = np.column_stack([base.column(history, "train_loss"), base.column(history, "val_loss")])
    diverged = epochs[np.isnan(losses).any(axis=1)]
    base.markers_at_top(ax, diverged, label="NaN / diverged")
    if best is not None:
        e, acc = best
        ax.axvline(e, color="gray", ls=":", lw=1.2,
                   label=f"best val acc {acc:.2f}% (epoch {e:g})")
        if kind == "acc":
            ax.plot([e], [acc], "*", color=base.VAL_COLOR, ms=14, mec="k", zorder=5)
    handles = []
    if kind == "loss":
        handles = _lr_axis(ax, epochs, base.column(history, "lr"))
        ax.set_ylabel("loss")
        ax.set_title("loss per epoch")
    else:
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy per epoch")
    base.epoch_axis(ax, epochs)
    ax.grid(alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize="small", loc="best")
    return base.save(fig, path)


def _lr_axis(ax, epochs, lr) -> list:
    """A constant learning rate is written in a corner; a schedule gets a linear right
    axis from 0 (a log axis would stretch a cosine's last steps over decades). Returns
    the legend handles to add (the learning-rate line)."""
    finite = lr[~np.isnan(lr)]
    if finite.size == 0:
        return []
    if np.ptp(finite) == 0:
        ax.text(0.99, 0.01, f"lr = {finite[0]:.3g}", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small", color="gray")
        return []
    ax2 = ax.twinx()
    line, = ax2.plot(epochs, lr, color="gray", ls="--", lw=1, label="learning rate (right axis)")
    ax2.set_ylim(min(0.0, finite.min() * 1.05), finite.max() * 1.05)
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax2.set_ylabel("learning rate", color="gray")
    ax2.tick_params(axis="y", colors="gray")
    return [line]


def overlay_curves(runs, path) -> Path:
    """Validation loss and accuracy of several runs overlaid, two panels.

    runs: list of {"label": str, "history": [per-epoch dicts as in `curves`]}.
    Colours come from a qualitative map (tab10, tab20 beyond 10 runs) and line
    styles cycle too, so 20+ runs stay distinguishable; with more than
    base.MANY_LEGEND runs the legend sits outside on the right.
    """
    runs = list(runs)
    if not runs:
        return base.message(path, "no runs to compare")
    # the legend beside the panels has a line per run: the figure grows to hold it
    fig, (ax_loss, ax_acc) = base.figure(12 if len(runs) > base.MANY_LEGEND else 11,
                                         max(4.5, 0.8 + 0.2 * len(runs)), ncols=2)
    colors = base.colors(len(runs))
    all_epochs = []
    for i, run in enumerate(runs):
        hist = list(run.get("history") or [])
        if not hist:
            continue
        epochs = base.epochs_of(hist)
        all_epochs.extend(epochs)
        kw = dict(color=colors[i], ls=("-", "--", ":", "-.")[i // 10 % 4],
                  label=str(run.get("label", f"run {i + 1}")), **base.line_style(len(epochs)))
        ax_loss.plot(epochs, base.column(hist, "val_loss"), **kw)
        ax_acc.plot(epochs, base.percent(base.column(hist, "val_acc")), **kw)
        bad = epochs[np.isnan(base.column(hist, "val_loss"))]
        base.markers_at_top(ax_loss, bad[:1], color=colors[i])  # first diverged epoch only
    for ax, name in ((ax_loss, "val loss"), (ax_acc, "val accuracy (%)")):
        ax.set_ylabel(name)
        ax.set_title(name)
        base.epoch_axis(ax, all_epochs)
        ax.grid(alpha=0.3)
    base.legend(ax_acc, len(runs))
    return base.save(fig, path)


# ---------------------------------------------------------------- learning rates


def lr_sweep(results, path, *, metric_keys=("val_loss", "val_acc")) -> Path:
    """Final metrics against learning rate (log x), one line per label, one panel per metric.

    results: list of dicts with `lr`, the metric keys (final values; accuracies
        as fractions), an optional `label` grouping configs ("adam, bn=on") and
        an optional `diverged` flag.
    A config is diverged when `diverged` is true or its val_loss (when
    present) is NaN/inf; it is drawn as an 'x' at the top of each panel in its
    label's colour rather than as a point on the line.
    """
    results = [r for r in results if base.number(r.get("lr")) > 0]  # log axis needs lr > 0
    if not results:
        return base.message(path, "no learning-rate results")
    labels = list(dict.fromkeys(str(r.get("label", "")) for r in results))
    colors = base.colors(len(labels))
    fig, axes = base.figure(5.5 * len(metric_keys) + (2 if len(labels) > base.MANY_LEGEND else 0), 4.5,
                        ncols=len(metric_keys))
    for ax, key in zip(axes, metric_keys):
        for label, color in zip(labels, colors):
            group = sorted((r for r in results if str(r.get("label", "")) == label),
                           key=lambda r: float(r["lr"]))
            lr = base.column(group, "lr")
            y = base.column(group, key)
            bad = np.array([_diverged(r) for r in group], dtype=bool)
            y = np.where(bad, np.nan, base.percent(y) if base.is_acc(key) else y)
            ax.plot(lr, y, "o-", color=color, ms=4, label=label or "runs")
            # labels diverging at the same lr would hide each other: stagger them
            base.markers_at_top(ax, lr[bad], color=color, y=0.97 - 0.035 * (labels.index(label) % 4))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(base.metric_label(key))
        ax.set_title(f"final {base.metric_label(key)}")
        ax.grid(alpha=0.3, which="both")
    any_bad = any(_diverged(r) for r in results)
    if any_bad:
        axes[-1].plot([], [], "x", color="gray", mew=2, ls="none", label="diverged (drawn at top)")
    # one legend is enough: both panels share the colours
    base.legend(axes[-1], len(labels) + any_bad if len(labels) > 1 or any_bad else 0)
    return base.save(fig, path)


def _diverged(result: dict) -> bool:
    """True if flagged, or if a recorded val_loss is NaN/inf (a missing one is not divergence)."""
    if result.get("diverged"):
        return True
    return "val_loss" in result and math.isnan(base.number(result["val_loss"]))


def lr_find(lrs, losses, path, *, suggestion=None, smoothing=0.9) -> Path:
    """A learning-rate range test: loss against lr (log x), raw and smoothed.

    lrs, losses: float (n,), one per step of an increasing-lr sweep.
    suggestion: an lr drawn as a vertical dashed line (None: no line).
    smoothing: beta of the bias-corrected exponential moving average (as in
        Adam's first moment), so the curve starts at the first loss, not at 0.
    The sweep is cut at the first non-finite loss (marked with an 'x'), and the
    y-range stops a little above the starting loss, because the final blow-up
    would otherwise flatten the interesting part of the curve.
    """
    lrs = np.asarray(lrs, dtype=np.float64).ravel()
    losses = np.asarray(losses, dtype=np.float64).ravel()
    if lrs.shape != losses.shape:
        raise SvhnJaxError(f"lr_find: lrs has {lrs.size} values but losses has {losses.size}; "
                           f"they must pair up one per step.")
    keep = lrs > 0
    lrs, losses = lrs[keep], losses[keep]
    bad = ~np.isfinite(losses)
    cut = int(np.argmax(bad)) if bad.any() else lrs.size
    if cut == 0:
        return base.message(path, "no finite losses in the lr sweep", "learning-rate finder")
    fig, (ax,) = base.figure(7, 4.5)
    smooth = _ema(losses[:cut], smoothing)
    ax.plot(lrs[:cut], losses[:cut], color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(lrs[:cut], smooth, color="tab:blue", lw=2, label=f"smoothed (EMA {smoothing:g})")
    if cut < lrs.size:
        base.markers_at_top(ax, lrs[cut:cut + 1], label=f"diverged at lr {lrs[cut]:.2g}")
    if suggestion is not None and base.number(suggestion) > 0:
        ax.axvline(float(suggestion), color="tab:green", ls="--",
                   label=f"suggested lr {float(suggestion):.2g}")
    lo, first = float(np.min(smooth)), float(smooth[0])
    top = first + 0.5 * (first - lo) if first > lo else float(np.max(losses[:cut]))
    lo = min(lo, float(np.min(losses[:cut])))  # the raw dips stay in view
    span = max(top - lo, 1e-12)
    ax.set_ylim(lo - 0.05 * span, top + 0.05 * span)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return base.save(fig, path)


def _ema(x: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average of float (n,) -> float (n,)."""
    out = np.empty_like(x)
    m = 0.0
    for t, v in enumerate(x, start=1):
        m = beta * m + (1.0 - beta) * v
        out[t - 1] = m / (1.0 - beta ** t)
    return out



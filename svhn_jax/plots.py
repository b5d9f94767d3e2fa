"""Figures for training runs, sweeps and gradient checks, written as PNG files.

Contract:

- Inputs are plain Python lists/dicts and NumPy arrays (call `np.asarray` on jax
  arrays first, or let these functions do it); nothing here imports jax.
- Every public function writes its PNG(s) ATOMICALLY and returns the `Path`
  written (`curves`, which writes two files, returns a pair). The image is
  rendered into a temporary file in the target directory and moved over the
  target with `os.replace`, so a reader or a kill never sees half a PNG. Missing
  parent directories are created.
- No pyplot: each figure is a `matplotlib.figure.Figure` with its own
  `FigureCanvasAgg`, so nothing is registered in pyplot's global figure list,
  the process-wide backend is never switched, no display is needed, and
  figures are freed by the garbage collector like any other object.
- Training produces NaN/inf when it diverges and records may lack keys; such
  values are drawn as gaps or as "x" markers at the top of the panel, never
  as an exception. Bad *shapes* (a non-square confusion matrix, labels that do
  not match images) raise `SvhnJaxError` (a `ValueError`).

History records (one dict per epoch), used by `curves` and `overlay_curves`:

    {"epoch": 1, "train_loss": 2.1, "val_loss": 2.0,
     "train_acc": 0.31, "val_acc": 0.33, "lr": 1e-3}     # accuracies as fractions

Functions:

    curves(history, path_loss, path_acc)                      -> (Path, Path)
    overlay_curves(runs, path)                                -> Path
    lr_sweep(results, path, *, metric_keys=("val_loss", "val_acc"))
    lr_find(lrs, losses, path, *, suggestion=None, smoothing=0.9)
    gradcheck(records, path, *, tol_fd=1e-6, tol_autodiff=1e-10)
    step_diffs(records, path, *, tol=None)
    confusion(matrix, path, *, class_names=None)
    misclassified(images, y_true, y_pred, path, *, max_images=36)
    heatmap(values, x_labels, y_labels, path, *, title, xlabel, ylabel, fmt="{:.3g}")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps  # read-only lookups; each returns a copy
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from . import atomic
from .errors import SvhnJaxError

DPI = 110
LOG_FLOOR = 1e-18       # exact zeros are drawn here on log axes (log 0 is -inf)
TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"
BAD_COLOR = "tab:red"   # diverged / NaN markers
MANY_LEGEND = 6         # more entries than this: the legend moves outside the axes


# ---------------------------------------------------------------- figure I/O


def _figure(width: float, height: float, ncols: int = 1):
    """A Figure with an Agg canvas and `ncols` axes side by side -> (fig, [axes]).

    Constrained layout keeps titles, tick labels and outside legends from
    overlapping without hand-tuned margins.
    """
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no pyplot, no global backend
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path) -> Path:
    """Render `fig` to PNG at `path` atomically; returns `path` as a Path.

    The temporary file lives in the target directory because `os.replace` is
    only atomic within one filesystem. fsync before the rename, so that after a
    crash the name points either at the old file or at a complete new one.
    """
    return atomic.write_with(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def _message(path, text: str, title: str | None = None) -> Path:
    """A small PNG that only says `text` (the figure for empty inputs)."""
    fig, (ax,) = _figure(6, 3)
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------- value helpers


def _number(value) -> float:
    """float(value), or NaN for None / missing / non-numeric / inf."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _column(records, key: str) -> np.ndarray:
    """float64 (len(records),) of record[key]; NaN where absent or non-finite."""
    return np.array([_number(r.get(key)) for r in records], dtype=np.float64)


def _epochs(history) -> np.ndarray:
    """float64 (n,) epoch numbers; a missing `epoch` falls back to its 1-based position."""
    e = _column(history, "epoch")
    return np.where(np.isnan(e), np.arange(1, len(history) + 1), e)


def _percent(fractions: np.ndarray) -> np.ndarray:
    """Accuracy fractions -> percent. Values already above 1 are taken as percent."""
    return fractions if np.nanmax(fractions, initial=0.0) > 1.0 else 100.0 * fractions


def _is_acc(key: str) -> bool:
    return "acc" in key


def _metric_label(key: str) -> str:
    """'val_acc' -> 'val accuracy (%)', 'val_loss' -> 'val loss'."""
    return key.replace("_acc", " accuracy (%)").replace("_", " ")


def _for_log(values: np.ndarray, floor: float = LOG_FLOOR):
    """Prepare non-negative errors for a log axis.

    values: float (n,), NaN allowed. Returns (plotted, clipped): `plotted` has
    every value <= floor (including exact zeros, common for hand vs autodiff
    in float64) raised to `floor`; `clipped` is the bool (n,) mask of those
    points, so they can be drawn differently and named in the legend.
    """
    clipped = np.abs(values) <= floor  # NaN compares False: stays NaN, a gap
    return np.where(clipped, floor, np.abs(values)), clipped


def _markers_at_top(ax, xs, color=BAD_COLOR, label=None, y=0.96):
    """Draw 'x' markers at x positions `xs`, pinned at height `y` (axes units) of `ax`.

    A blended transform (x in data, y in axes units) keeps them visible
    whatever the y-range, since the values they stand for (NaN, inf) have no
    place on the axis. A 12% top margin keeps the data below them.
    """
    xs = np.asarray(xs, dtype=np.float64)
    if xs.size:
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(xs, np.full(xs.shape, y), "x", color=color, ms=8, mew=2,
                transform=trans, clip_on=False, label=label, linestyle="none")
        ax.margins(y=0.12)


def _legend(ax, n_entries: int, **kw):
    """Legend inside the axes, or outside on the right when there are many entries."""
    if n_entries == 0:
        return
    if n_entries > MANY_LEGEND:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
                  borderaxespad=0.0, **kw)
    else:
        ax.legend(fontsize="small", **kw)


def _epoch_axis(ax, epochs):
    """Integer epoch ticks; a lone epoch gets a neighbour on each side, or the
    integer locator gives up and prints ticks like 0.975."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = np.asarray(epochs, dtype=np.float64)
    if epochs.size and np.ptp(epochs) < 2:
        ax.set_xlim(epochs.min() - 1, epochs.max() + 1)


def _line_style(n_points: int) -> dict:
    """Markers for short series: a single epoch would otherwise draw nothing."""
    return {"marker": "o", "ms": 3} if n_points <= 40 else {}


# ---------------------------------------------------------------- training curves


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
        return (_message(path_loss, "no epochs recorded", "loss"),
                _message(path_acc, "no epochs recorded", "accuracy"))
    epochs = _epochs(history)
    best = _best_epoch(epochs, _percent(_column(history, "val_acc")))
    return (_curves_panel(history, epochs, best, path_loss, "loss"),
            _curves_panel(history, epochs, best, path_acc, "acc"))


def _curves_panel(history, epochs, best, path, kind: str) -> Path:
    """One of the two `curves` figures; kind is 'loss' or 'acc'."""
    fig, (ax,) = _figure(7, 4.5)
    style = _line_style(len(epochs))
    for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
        y = _column(history, f"{split}_{kind}")
        if kind == "acc":
            y = _percent(y)
        ax.plot(epochs, y, color=color, label=split, **style)
    # an epoch is diverged when any of its losses is missing or non-finite
    losses = np.column_stack([_column(history, "train_loss"), _column(history, "val_loss")])
    diverged = epochs[np.isnan(losses).any(axis=1)]
    _markers_at_top(ax, diverged, label="NaN / diverged")
    if best is not None:
        e, acc = best
        ax.axvline(e, color="gray", ls=":", lw=1.2,
                   label=f"best val acc {acc:.2f}% (epoch {e:g})")
        if kind == "acc":
            ax.plot([e], [acc], "*", color=VAL_COLOR, ms=14, mec="k", zorder=5)
    if kind == "loss":
        _lr_axis(ax, epochs, _column(history, "lr"))
        ax.set_ylabel("loss")
        ax.set_title("loss per epoch")
    else:
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy per epoch")
    _epoch_axis(ax, epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


def _lr_axis(ax, epochs, lr):
    """A constant learning rate goes in the title; a schedule gets a log right axis."""
    finite = lr[~np.isnan(lr)]
    if finite.size == 0:
        return
    if np.ptp(finite) == 0:
        ax.text(0.99, 0.01, f"lr = {finite[0]:.3g}", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small", color="gray")
        return
    ax2 = ax.twinx()
    ax2.plot(epochs, lr, color="gray", ls="--", lw=1)
    if finite.min() > 0:
        ax2.set_yscale("log")
    ax2.set_ylabel("learning rate (dashed)", color="gray")
    ax2.tick_params(axis="y", colors="gray")


def overlay_curves(runs, path) -> Path:
    """Validation loss and accuracy of several runs overlaid, two panels.

    runs: list of {"label": str, "history": [per-epoch dicts as in `curves`]}.
    Colours come from a qualitative map (tab10, tab20 beyond 10 runs) and line
    styles cycle too, so 20+ runs stay distinguishable; with more than
    MANY_LEGEND runs the legend sits outside on the right.
    """
    runs = list(runs)
    if not runs:
        return _message(path, "no runs to compare")
    fig, (ax_loss, ax_acc) = _figure(12 if len(runs) > MANY_LEGEND else 11, 4.5, ncols=2)
    colors = _colors(len(runs))
    all_epochs = []
    for i, run in enumerate(runs):
        hist = list(run.get("history") or [])
        if not hist:
            continue
        epochs = _epochs(hist)
        all_epochs.extend(epochs)
        kw = dict(color=colors[i], ls=("-", "--", ":", "-.")[i // 10 % 4],
                  label=str(run.get("label", f"run {i + 1}")), **_line_style(len(epochs)))
        ax_loss.plot(epochs, _column(hist, "val_loss"), **kw)
        ax_acc.plot(epochs, _percent(_column(hist, "val_acc")), **kw)
        bad = epochs[np.isnan(_column(hist, "val_loss"))]
        _markers_at_top(ax_loss, bad[:1], color=colors[i])  # first diverged epoch only
    for ax, name in ((ax_loss, "val loss"), (ax_acc, "val accuracy (%)")):
        ax.set_ylabel(name)
        ax.set_title(name)
        _epoch_axis(ax, all_epochs)
        ax.grid(alpha=0.3)
    _legend(ax_acc, len(runs))
    return _save(fig, path)


def _colors(n: int) -> list:
    """n qualitative colours (tab10 up to 10, tab20 beyond; repeats after 20)."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


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
    results = [r for r in results if _number(r.get("lr")) > 0]  # log axis needs lr > 0
    if not results:
        return _message(path, "no learning-rate results")
    labels = list(dict.fromkeys(str(r.get("label", "")) for r in results))
    colors = _colors(len(labels))
    fig, axes = _figure(5.5 * len(metric_keys) + (2 if len(labels) > MANY_LEGEND else 0), 4.5,
                        ncols=len(metric_keys))
    for ax, key in zip(axes, metric_keys):
        for label, color in zip(labels, colors):
            group = sorted((r for r in results if str(r.get("label", "")) == label),
                           key=lambda r: float(r["lr"]))
            lr = _column(group, "lr")
            y = _column(group, key)
            bad = np.array([_diverged(r) for r in group], dtype=bool)
            y = np.where(bad, np.nan, _percent(y) if _is_acc(key) else y)
            ax.plot(lr, y, "o-", color=color, ms=4, label=label or "runs")
            # labels diverging at the same lr would hide each other: stagger them
            _markers_at_top(ax, lr[bad], color=color, y=0.97 - 0.035 * (labels.index(label) % 4))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(_metric_label(key))
        ax.set_title(f"final {_metric_label(key)}")
        ax.grid(alpha=0.3, which="both")
    any_bad = any(_diverged(r) for r in results)
    if any_bad:
        axes[-1].plot([], [], "x", color="gray", mew=2, ls="none", label="diverged (drawn at top)")
    # one legend is enough: both panels share the colours
    _legend(axes[-1], len(labels) + any_bad if len(labels) > 1 or any_bad else 0)
    return _save(fig, path)


def _diverged(result: dict) -> bool:
    """True if flagged, or if a recorded val_loss is NaN/inf (a missing one is not divergence)."""
    if result.get("diverged"):
        return True
    return "val_loss" in result and math.isnan(_number(result["val_loss"]))


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
        return _message(path, "no finite losses in the lr sweep", "learning-rate finder")
    fig, (ax,) = _figure(7, 4.5)
    smooth = _ema(losses[:cut], smoothing)
    ax.plot(lrs[:cut], losses[:cut], color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(lrs[:cut], smooth, color="tab:blue", lw=2, label=f"smoothed (EMA {smoothing:g})")
    if cut < lrs.size:
        _markers_at_top(ax, lrs[cut:cut + 1], label=f"diverged at lr {lrs[cut]:.2g}")
    if suggestion is not None and _number(suggestion) > 0:
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
    return _save(fig, path)


def _ema(x: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average of float (n,) -> float (n,)."""
    out = np.empty_like(x)
    m = 0.0
    for t, v in enumerate(x, start=1):
        m = beta * m + (1.0 - beta) * v
        out[t - 1] = m / (1.0 - beta ** t)
    return out


# ---------------------------------------------------------------- gradient checks


def gradcheck(records, path, *, tol_fd=1e-6, tol_autodiff=1e-10) -> Path:
    """Relative gradient errors recorded during training, log y, with tolerances.

    records: list of {"step": int, "directional_fd": float,
        "manual_vs_autodiff": float}, relative errors >= 0. Exact zeros (hand
        and jax.grad agreeing bit for bit) are drawn at LOG_FLOOR as hollow
        markers, and the legend says so. NaN values are left out.
    tol_fd, tol_autodiff: drawn as dashed horizontal lines in the series' colours.
    """
    records = list(records)
    if not records:
        return _message(path, "no gradient checks recorded", "gradient checks")
    steps = _column(records, "step")
    steps = np.where(np.isnan(steps), np.arange(len(records)), steps)
    series = (("directional_fd", "hand vs finite differences (directional)", tol_fd, "tab:purple"),
              ("manual_vs_autodiff", "hand vs jax.grad", tol_autodiff, "tab:green"))
    fig, (ax,) = _figure(8, 6)
    worst = []
    for key, name, tol, color in series:
        raw = _column(records, key)
        worst.append(f"{name}: max {np.nanmax(raw, initial=0.0):.1e} (tolerance {tol:.0e})")
        _log_series(ax, steps, raw, name, color)
        ax.axhline(tol, color=color, ls="--", lw=1.2, label=f"tolerance {tol:.0e}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("relative error")
    ax.set_title("gradient checks during training\n" + "\n".join(worst), fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="major")
    # up to six long entries: below the plot, where they cannot hide a point
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return _save(fig, path)


def step_diffs(records, path, *, tol=None) -> Path:
    """Hand-written vs jax.grad gradients over training steps (log y).

    records: list of {"step": int, "manual_vs_autodiff": float (relative error),
        "max_abs_diff": float (optional, max |hand - autodiff| over all entries)}.
    tol: optional tolerance for the relative error, drawn as a dashed line.
    Exact zeros are drawn at LOG_FLOOR as hollow markers (named in the legend).
    """
    records = list(records)
    if not records:
        return _message(path, "no gradient differences recorded", "hand vs jax.grad")
    steps = _column(records, "step")
    steps = np.where(np.isnan(steps), np.arange(len(records)), steps)
    fig, (ax,) = _figure(7.5, 4.5)
    _log_series(ax, steps, _column(records, "manual_vs_autodiff"),
                "relative error", "tab:green")
    if any("max_abs_diff" in r for r in records):
        _log_series(ax, steps, _column(records, "max_abs_diff"),
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
    return _save(fig, path)


def _log_series(ax, steps, raw, name, color):
    """Plot errors `raw` (n,) vs `steps` (n,) on a log axis; zeros hollow at LOG_FLOOR."""
    y, clipped = _for_log(raw)
    # the line joins only the drawable points: a gap at every exact zero would
    # break it into fragments, and a dive to the floor would dwarf the real values
    shown = ~clipped & ~np.isnan(y)
    ax.plot(steps[shown], y[shown], "o-", color=color, ms=3, lw=1, label=name)
    if clipped.any():
        ax.plot(steps[clipped], y[clipped], "o", mfc="none", mec=color, ms=6, ls="none",
                label=f"{name}: exactly 0, drawn at {LOG_FLOOR:.0e}")


# ---------------------------------------------------------------- classification


def _class_names(k: int, class_names) -> list[str]:
    """Names for k classes; SVHN's default is the digits 0..9 themselves."""
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise SvhnJaxError(f"confusion: {len(names)} class names for a {k}x{k} matrix.")
    return names


def confusion(matrix, path, *, class_names=None) -> Path:
    """Confusion matrix: colour = fraction of the true class (row), text = count.

    matrix: int (K, K), rows true class, columns predicted class.
    class_names: K labels (default "0".."K-1", the SVHN digits).
    Row normalisation makes rare classes as readable as common ones; rows
    with no examples stay white. Counts are printed for K <= 20.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise SvhnJaxError(f"confusion: expected a square (K, K) matrix, got shape {m.shape}.")
    k = m.shape[0]
    names = _class_names(k, class_names)
    rows = m.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    side = min(4.0 + 0.5 * k, 16.0)
    fig, (ax,) = _figure(side + 1.2, side)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")
    if k <= 20:
        size = "small" if k > 12 else "medium"
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=size,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = m.sum()
    acc = f"accuracy {100.0 * np.trace(m) / total:.2f}% of {int(total)}" if total else "no examples"
    ax.set_title(f"confusion matrix ({acc})")
    return _save(fig, path)


def _as_images(images) -> np.ndarray:
    """(n, H, W), (n, H, W, 1) or (n, H, W, 3) -> (n, H, W) or (n, H, W, 3) for imshow.

    Float images (for example standardised inputs) are rescaled per image to
    [0, 1] so that they are visible whatever their range.
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise SvhnJaxError(f"misclassified: expected images (n, 32, 32), (n, 32, 32, 1) or "
                           f"(n, 32, 32, 3), got shape {x.shape}.")
    if np.issubdtype(x.dtype, np.floating):
        axes = tuple(range(1, x.ndim))
        lo, hi = np.nanmin(x, axis=axes, keepdims=True), np.nanmax(x, axis=axes, keepdims=True)
        x = np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return x


def misclassified(images, y_true, y_pred, path, *, max_images=36) -> Path:
    """A grid of misclassified images titled "true 3 / pred 8".

    images: uint8 (n, 32, 32, 3), (n, 32, 32, 1) or (n, 32, 32); n may be 0.
    y_true, y_pred: int (n,). Only the first `max_images` are shown.
    """
    x = _as_images(images)
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    n = x.shape[0]
    if y_true.size != n or y_pred.size != n:
        raise SvhnJaxError(f"misclassified: {n} images but {y_true.size} true and "
                           f"{y_pred.size} predicted labels; they must pair up.")
    if n == 0 or max_images < 1:
        return _message(path, "no misclassified images", "misclassified")
    shown = min(n, int(max_images))
    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    # A fixed layout: the constrained-layout solver takes seconds for 36 small axes.
    fig = Figure(figsize=(1.4 * cols + 0.2, 1.55 * rows + 0.5), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, cols, squeeze=False,
                        gridspec_kw={"left": 0.02, "right": 0.98, "bottom": 0.02,
                                     "top": 1 - 0.8 / (1.55 * rows + 0.5), "hspace": 0.35, "wspace": 0.1})
    # single-channel images need an explicit range, or imshow stretches each one
    gray = {} if x.ndim == 4 else {"cmap": "gray", "vmin": 0, "vmax": 1.0 if x.dtype.kind == "f" else 255}
    for i, ax in enumerate(grid.ravel()):
        ax.set_axis_off()
        if i < shown:
            ax.imshow(x[i], interpolation="nearest", **gray)
            ax.set_title(f"true {y_true[i]} / pred {y_pred[i]}", fontsize=8)
    fig.suptitle(f"misclassified: {shown} of {n} shown" if shown < n else f"misclassified ({n})")
    return _save(fig, path)


# ---------------------------------------------------------------- grids


def heatmap(values, x_labels, y_labels, path, *, title, xlabel, ylabel, fmt="{:.3g}") -> Path:
    """An annotated grid of numbers, e.g. val accuracy over (lr, weight decay).

    values: float (len(y_labels), len(x_labels)); NaN/inf cells (diverged
        configs) are grey and read "div".
    fmt: format of each annotation.
    """
    v = np.asarray(values, dtype=np.float64)
    x_labels, y_labels = [str(s) for s in x_labels], [str(s) for s in y_labels]
    if v.shape != (len(y_labels), len(x_labels)):
        raise SvhnJaxError(f"heatmap: values have shape {v.shape} but the labels give "
                           f"({len(y_labels)}, {len(x_labels)}) = (len(y_labels), len(x_labels)).")
    if v.size == 0:
        return _message(path, "no values", title)
    cmap = colormaps["viridis"].with_extremes(bad="lightgray")  # a copy; the registry is untouched
    masked = np.ma.masked_invalid(v)
    fig, (ax,) = _figure(max(4.5, 1.0 * len(x_labels) + 2.5), max(3.5, 0.6 * len(y_labels) + 2.0))
    im = ax.imshow(masked, cmap=cmap, aspect="auto")
    fig.colorbar(im, ax=ax)
    finite = v[np.isfinite(v)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if np.isfinite(v[i, j]):
                # viridis is dark at the low end: white text there, black on yellow
                light = hi > lo and (v[i, j] - lo) / (hi - lo) > 0.6
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize="small",
                        color="black" if light else "white")
            else:
                ax.text(j, i, "div", ha="center", va="center", fontsize="small", color=BAD_COLOR)
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_yticks(range(len(y_labels)), y_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)

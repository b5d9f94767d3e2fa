"""What every figure shares: a Figure with its own Agg canvas (no pyplot), the
atomic PNG write, value helpers that turn NaN/missing into gaps, and markers
and legends that stay readable (see the package docstring for the contract)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps  # read-only lookups; each returns a copy
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from .. import atomic

DPI = 110
LOG_FLOOR = 1e-18       # exact zeros are drawn here on log axes (log 0 is -inf)
TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"
BAD_COLOR = "tab:red"   # diverged / NaN markers
MANY_LEGEND = 6         # more entries than this: the legend moves outside the axes


# ---------------------------------------------------------------- figure I/O


def figure(width: float, height: float, ncols: int = 1):
    """A Figure with an Agg canvas and `ncols` axes side by side -> (fig, [axes]).

    Constrained layout keeps titles, tick labels and outside legends from
    overlapping without hand-tuned margins.
    """
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no pyplot, no global backend
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save(fig: Figure, path) -> Path:
    """Render `fig` to PNG at `path` atomically; returns `path` as a Path.

    The temporary file lives in the target directory because `os.replace` is
    only atomic within one filesystem. fsync before the rename, so that after a
    crash the name points either at the old file or at a complete new one.
    """
    return atomic.write_with(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def message(path, text: str, title: str | None = None) -> Path:
    """A small PNG that only says `text` (the figure for empty inputs)."""
    fig, (ax,) = figure(6, 3)
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return save(fig, path)


# ---------------------------------------------------------------- value helpers


def number(value) -> float:
    """float(value), or NaN for None / missing / non-numeric / inf."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def column(records, key: str) -> np.ndarray:
    """float64 (len(records),) of record[key]; NaN where absent or non-finite."""
    return np.array([number(r.get(key)) for r in records], dtype=np.float64)


def epochs_of(history) -> np.ndarray:
    """float64 (n,) epoch numbers; a missing `epoch` falls back to its 1-based position."""
    e = column(history, "epoch")
    return np.where(np.isnan(e), np.arange(1, len(history) + 1), e)


def percent(fractions: np.ndarray) -> np.ndarray:
    """Accuracy fractions -> percent. Values already above 1 are taken as percent."""
    return fractions if np.nanmax(fractions, initial=0.0) > 1.0 else 100.0 * fractions


def is_acc(key: str) -> bool:
    return "acc" in key


def metric_label(key: str) -> str:
    """'val_acc' -> 'val accuracy (%)', 'val_loss' -> 'val loss'."""
    return key.replace("_acc", " accuracy (%)").replace("_", " ")


def for_log(values: np.ndarray, floor: float = LOG_FLOOR):
    """Prepare non-negative errors for a log axis.

    values: float (n,), NaN allowed. Returns (plotted, clipped): `plotted` has
    every value <= floor (including exact zeros, common for hand vs autodiff
    in float64) raised to `floor`; `clipped` is the bool (n,) mask of those
    points, so they can be drawn differently and named in the legend.
    """
    clipped = np.abs(values) <= floor  # NaN compares False: stays NaN, a gap
    return np.where(clipped, floor, np.abs(values)), clipped


def markers_at_top(ax, xs, color=BAD_COLOR, label=None, y=0.96):
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


def legend(ax, n_entries: int, **kw):
    """Legend inside the axes, or outside on the right when there are many entries."""
    if n_entries == 0:
        return
    if n_entries > MANY_LEGEND:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
                  borderaxespad=0.0, **kw)
    else:
        ax.legend(fontsize="small", **kw)


def epoch_axis(ax, epochs):
    """Integer epoch ticks; a lone epoch gets a neighbour on each side, or the
    integer locator gives up and prints ticks like 0.975."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = np.asarray(epochs, dtype=np.float64)
    if epochs.size and np.ptp(epochs) < 2:
        ax.set_xlim(epochs.min() - 1, epochs.max() + 1)


def line_style(n_points: int) -> dict:
    """Markers for short series: a single epoch would otherwise draw nothing."""
    return {"marker": "o", "ms": 3} if n_points <= 40 else {}




def colors(n: int) -> list:
    """n qualitative colours (tab10 up to 10, tab20 beyond; repeats after 20)."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


"""Figures of results: `confusion`, `misclassified`, `heatmap` (see the
package docstring for the contract)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps  # read-only lookups; each returns a copy
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import SvhnJaxError
from . import base

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
    fig, (ax,) = base.figure(side + 1.2, side)
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
    return base.save(fig, path)


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
        return base.message(path, "no misclassified images", "misclassified")
    shown = min(n, int(max_images))
    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    # A fixed layout: the constrained-layout solver takes seconds for 36 small axes.
    fig = Figure(figsize=(1.4 * cols + 0.2, 1.55 * rows + 0.5), dpi=base.DPI)
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
    return base.save(fig, path)


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
        return base.message(path, "no values", title)
    cmap = colormaps["viridis"].with_extremes(bad="lightgray")  # a copy; the registry is untouched
    masked = np.ma.masked_invalid(v)
    fig, (ax,) = base.figure(max(4.5, 1.0 * len(x_labels) + 2.5), max(3.5, 0.6 * len(y_labels) + 2.0))
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
                ax.text(j, i, "div", ha="center", va="center", fontsize="small", color=base.BAD_COLOR)
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_yticks(range(len(y_labels)), y_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return base.save(fig, path)


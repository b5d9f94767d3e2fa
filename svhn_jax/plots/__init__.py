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

Functions (modules: `training` for curves and learning rates, `checks` for
gradient checks, `results` for confusion matrices, mistakes and grids, `base`
for what they share):

    curves(history, path_loss, path_acc)                      -> (Path, Path)
    overlay_curves(runs, path)                                -> Path
    lr_sweep(results, path, *, metric_keys=("val_loss", "val_acc"))
    lr_find(lrs, losses, path, *, suggestion=None, smoothing=0.9)
    gradcheck(records, path, *, tol_fd=1e-6, tol_autodiff=1e-10, tol_jvp=None)
    step_diffs(records, path, *, tol=None)
    confusion(matrix, path, *, class_names=None)
    misclassified(images, y_true, y_pred, path, *, max_images=36)
    heatmap(values, x_labels, y_labels, path, *, title, xlabel, ylabel, fmt="{:.3g}")
"""

from .checks import gradcheck, gradcheck_figure, gradcheck_summary, step_diffs
from .results import confusion, heatmap, misclassified
from .training import curves, lr_find, lr_sweep, overlay_curves

__all__ = ["curves", "overlay_curves", "lr_sweep", "lr_find", "gradcheck", "gradcheck_figure",
           "gradcheck_summary", "step_diffs", "confusion", "misclassified", "heatmap"]

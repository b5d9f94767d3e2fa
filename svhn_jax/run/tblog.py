"""TensorBoard event files for runs and sweeps, written with tensorboardX (no TensorFlow).

A run writes RUN/tb/ at every epoch end, outside compiled code:

    loss/train  loss/val  accuracy/train  accuracy/val  lr  images_per_s  epoch
    gradcheck/directional_fd  gradcheck/manual_vs_autodiff  gradcheck/smooth (0/1)
    weights/<leaf>  gradients/<leaf>     histograms, every few epochs
    grad_norm/<leaf>  grad_norm/total    L2 norms of the same gradients
    images/confusion  images/misclassified   at the end
    settings                             the run's config as a markdown table

Leaves are named as the gradient checks name them ('0.dense.W'). The x axis is
the global step (updates done when the value was recorded; an epoch row's step
is the step at its end), so per-step gradient checks and per-epoch curves share
one axis and a resumed run continues it; the `epoch` scalar maps steps to epochs.

Resuming at step S opens the writer with purge_step=S: TensorBoard's reader then
drops every event at a step >= S written before, so the epoch redone after a
kill shows once. A sweep is one folder per configuration, each an HParams
session (see `log_sweep`).

Every function takes the writer `open_writer` returns, or None (events off, or not
process 0), and then does nothing, so the run loop needs no `if` around the calls.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import time
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import SvhnJaxError
from ..nn.gradcheck import leaf_names

TB_DIR = "tb"          # events of a run or sweep go to OUT/tb
FLUSH_SECS = 10        # how stale a live TensorBoard may be; flushing runs in a thread
MAX_QUEUE = 1000       # events queued for the writer thread before a call waits for it
HIST_BINS = 64         # TensorBoard re-buckets to 30 for display; 64 keeps the shape

# history-row key -> tag; keys absent from a row are skipped (a sweep has no images_per_s)
EPOCH_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val",
              "train_acc": "accuracy/train", "val_acc": "accuracy/val",
              "lr": "lr", "images_per_s": "images_per_s", "epoch": "epoch"}
GRADCHECK_TAGS = {"directional_fd": "gradcheck/directional_fd",
                  "manual_vs_autodiff": "gradcheck/manual_vs_autodiff", "smooth": "gradcheck/smooth"}
SWEEP_METRICS = ("best_val_acc", "final_val_acc", "final_val_loss", "diverged")
# Hyperparameters every sweep session records; any other setting that varies is added.
SWEEP_HPARAMS = ("lr", "reg", "optimizer", "hidden", "batchnorm", "batch", "schedule",
                 "epochs", "seed")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}   # IHDR colour type -> channels


def _tensorboardx():
    # Imported on first use: commands that write no events (bench, gradcheck, or train
    # with --no-tensorboard) run where tensorboardX is not installed.
    try:
        import tensorboardX
    except ImportError:
        raise SvhnJaxError("tensorboardX is not installed: pip install tensorboardX "
                           "(or pass --no-tensorboard)") from None
    return tensorboardX


def _protos():
    """tensorboardX's copies of TensorBoard's protos: (summary_pb2, api_pb2, plugin_hparams_pb2)."""
    _tensorboardx()
    from tensorboardX.proto import api_pb2, plugin_hparams_pb2, summary_pb2
    return summary_pb2, api_pb2, plugin_hparams_pb2


def open_writer(logdir, *, start_step: int = 0, history=(), enabled: bool = True):
    """A SummaryWriter on `logdir` (created if missing), or None when not `enabled`.

    start_step is the step the run (re)starts from. Events already in `logdir` at
    steps >= start_step are hidden from TensorBoard (purge_step): the resumed run
    writes them again. Except one: the row of the epoch that ended at start_step,
    written before that checkpoint and not redone; pass the checkpoint's history
    and its rows at steps >= start_step are written again here. The file name
    carries start_step so that files opened within one second still sort in order.
    """
    if not enabled:
        return None
    logdir = atomic.make_dir(logdir, "choose a writable --out or pass --no-tensorboard")
    writer = _tensorboardx().SummaryWriter(
        str(logdir), purge_step=int(start_step), flush_secs=FLUSH_SECS, max_queue=MAX_QUEUE,
        filename_suffix=f".{int(start_step):010d}.{os.getpid()}")
    for row in history:
        if row["step"] >= start_step:
            log_epoch(writer, row)
    return writer


def close(writer) -> None:
    """Write out every queued event and close the file (call it in a `finally`)."""
    if writer is not None:
        writer.close()


def log_epoch(writer, row: dict) -> None:
    """Scalars of one history row (epoch, step, train_loss, ...) at step row['step']."""
    if writer is None:
        return
    for key, tag in EPOCH_TAGS.items():
        if key in row:
            writer.add_scalar(tag, float(row[key]), int(row["step"]))


def log_gradchecks(writer, records) -> None:
    """Per-step gradient-check records (step, directional_fd, manual_vs_autodiff,
    smooth) as scalars at their own steps; `smooth` as 0/1."""
    if writer is None:
        return
    for r in records:
        for key, tag in GRADCHECK_TAGS.items():
            writer.add_scalar(tag, float(r[key]), int(r["step"]))


def log_layers(writer, step: int, spec, params, grads=None) -> None:
    """Histograms of every parameter leaf and, given grads (same tree), of every
    gradient leaf with its L2 norm and the norm over all leaves.

    params, grads: tuples of dicts of arrays as model.init makes them; spec names
    the layers. Arrays may live on the device: each is copied to the host once.
    """
    if writer is None:
        return
    for name, leaf in zip(leaf_names(spec, params), _leaves(params)):
        _histogram(writer, f"weights/{name}", leaf, step)
    if grads is None:
        return
    total = 0.0
    for name, leaf in zip(leaf_names(spec, grads), _leaves(grads)):
        sq = _histogram(writer, f"gradients/{name}", leaf, step)
        total += sq
        writer.add_scalar(f"grad_norm/{name}", math.sqrt(sq), step)
    writer.add_scalar("grad_norm/total", math.sqrt(total), step)


def _leaves(tree):
    return [d[k] for d in tree for k in sorted(d)]


def _histogram(writer, tag: str, values, step: int) -> float:
    """Write a histogram of the finite entries of `values`; returns their sum of squares.

    HIST_BINS equal buckets from min to max; bucket i holds [limit[i-1], limit[i]),
    the last one its upper limit too. Indices are computed in float32 and counted
    with bincount, several times faster than np.histogram on a large leaf; a value
    within float32 rounding of a limit may land in the bucket beside it. No float64
    copy of a leaf either (it costs more than the histogram); the sums accumulate in
    float64 all the same.
    """
    v = np.asarray(values).ravel()
    if v.size and not (np.isfinite(v.min()) and np.isfinite(v.max())):
        v = v[np.isfinite(v)]     # a NaN or inf anywhere shows in min or max
    if not v.size:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    # A constant leaf (a zero-initialised bias) still needs buckets of some width.
    first, last = (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)
    idx = ((v - np.float32(first)) * np.float32(HIST_BINS / (last - first))).astype(np.intp)
    counts = np.bincount(np.clip(idx, 0, HIST_BINS - 1, out=idx), minlength=HIST_BINS)
    limits = first + (last - first) * np.arange(1, HIST_BINS + 1) / HIST_BINS
    sq = float(np.einsum("i,i->", v, v, dtype=np.float64))
    writer.add_histogram_raw(tag, lo, hi, v.size, float(v.sum(dtype=np.float64)), sq,
                             limits.tolist(), counts.tolist(), global_step=step)
    return sq


def log_image(writer, tag: str, image, step: int) -> None:
    """An image at `step`: a PNG file's path (its bytes are stored as they are), a
    matplotlib Figure (rendered to PNG), or an array (H, W) or (H, W, 1|3|4) uint8."""
    if writer is None:
        return
    if isinstance(image, (str, os.PathLike)):
        png = Path(image).read_bytes()
    elif hasattr(image, "savefig"):
        buf = io.BytesIO()
        image.savefig(buf, format="png")
        png = buf.getvalue()
    else:
        png = _png_from_array(image)
    h, w, c = _png_shape(png, tag)
    pb = _protos()[0]
    img = pb.Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=png)
    writer.file_writer.add_summary(pb.Summary(value=[pb.Summary.Value(tag=tag, image=img)]), step)


def _png_from_array(a) -> bytes:
    from PIL import Image

    a = np.asarray(a)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise SvhnJaxError(f"an image must be uint8 (H, W) or (H, W, 1|3|4), got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(buf, format="png")
    return buf.getvalue()


def _png_shape(png: bytes, tag: str) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR chunk, which always comes first."""
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise SvhnJaxError(f"image {tag!r} is not a PNG file")
    w, h = struct.unpack(">II", png[16:24])
    return h, w, _PNG_CHANNELS.get(png[25], 3)


def log_settings(writer, config: dict, step: int = 0) -> None:
    """The run's settings as a markdown table under the tag 'settings'."""
    if writer is None:
        return
    writer.add_text("settings", settings_markdown(config), step)


def settings_markdown(config: dict, max_chars: int = 120) -> str:
    """| setting | value | rows, values as JSON; a long one (the fitted preprocessing's
    mean image) is summarised, as it is in config.json in full."""
    rows = ["| setting | value |", "| --- | --- |"]
    for key, value in config.items():
        text = json.dumps(value, default=str)
        if len(text) > max_chars:
            text = f"({type(value).__name__}, {len(text)} characters: see config.json)"
        rows.append(f"| {key} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


# --------------------------------------------------------------------- sweeps


def log_sweep(logdir, results: list[dict], *, hparams=None) -> list[Path]:
    """One folder per configuration under `logdir`, each an HParams session: its
    hyperparameters, its curves (history rows, which need 'step'), the metrics
    metrics/best_val_acc, final_val_acc, final_val_loss and diverged (0/1) at its
    last step (a NaN one is left out), and status success, or failure when it diverged.

    results: tune's result dicts (config, history, best_val_acc, final_val_acc,
    final_val_loss, status). hparams: the names to record; by default
    SWEEP_HPARAMS plus every other setting whose value differs between configs.
    No experiment summary is written: TensorBoard uses the first one it finds
    under --logdir, which would hide the hyperparameters of every other sweep
    there; without one it builds the table from all sessions it finds.
    Returns the session folders, in the order of `results`.
    """
    configs = [r["config"] for r in results]
    names = list(hparams) if hparams is not None else _sweep_hparams(configs)
    varying = [k for k in names if _varies(k, configs)]
    folders = []
    for i, r in enumerate(results):
        values = {k: _hparam_value(r["config"][k]) for k in names if k in r["config"]}
        folder = Path(logdir) / _session_name(i, {k: values[k] for k in varying if k in values})
        writer = open_writer(folder)
        try:
            _write_session(writer, r, values)
        finally:
            close(writer)
        folders.append(folder)
    return folders


def _sweep_hparams(configs: list[dict]) -> list[str]:
    keys = [k for k in SWEEP_HPARAMS if any(k in c for c in configs)]
    for k in dict.fromkeys(k for c in configs for k in c):
        if k not in keys and _varies(k, configs):
            keys.append(k)
    return keys


def _varies(key: str, configs: list[dict]) -> bool:
    return len({json.dumps(c.get(key), default=str) for c in configs}) > 1


def _hparam_value(v):
    """bool, float or str, as the HParams plugin stores them; hidden [512, 256] -> '512x256'."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, np.integer)) for x in v):
        return "x".join(map(str, v)) or "none"
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _session_name(i: int, values: dict) -> str:
    label = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return re.sub(r"[^\w.,=+-]", "_", f"{i:03d}-{label}" if label else f"{i:03d}")


def _write_session(writer, result: dict, values: dict) -> None:
    _, api, hp = _protos()
    start = hp.SessionStartInfo(start_time_secs=time.time())
    for k, v in values.items():
        if isinstance(v, bool):
            start.hparams[k].bool_value = v
        elif isinstance(v, float):
            start.hparams[k].number_value = v
        else:
            start.hparams[k].string_value = v
    _plugin_summary(writer, "_hparams_/session_start_info",
                    hp.HParamsPluginData(session_start_info=start, version=0), 0)
    for row in result["history"]:
        log_epoch(writer, row)
    last = int(result["history"][-1]["step"]) if result["history"] else 0
    diverged = result["status"] == "diverged"
    metrics = {"best_val_acc": result["best_val_acc"], "final_val_acc": result["final_val_acc"],
               "final_val_loss": result["final_val_loss"], "diverged": float(diverged)}
    for k in SWEEP_METRICS:
        # A configuration that diverged in its first epoch has no final loss (NaN): the
        # HParams table leaves the cell empty rather than showing NaN.
        if math.isfinite(metrics[k]):
            writer.add_scalar(f"metrics/{k}", float(metrics[k]), last)
    end = hp.SessionEndInfo(status=api.STATUS_FAILURE if diverged else api.STATUS_SUCCESS,
                            end_time_secs=time.time())
    _plugin_summary(writer, "_hparams_/session_end_info",
                    hp.HParamsPluginData(session_end_info=end, version=0), last)


def _plugin_summary(writer, tag: str, content, step: int) -> None:
    pb = _protos()[0]
    meta = pb.SummaryMetadata(plugin_data=pb.SummaryMetadata.PluginData(
        plugin_name="hparams", content=content.SerializeToString()))
    writer.file_writer.add_summary(pb.Summary(value=[pb.Summary.Value(tag=tag, metadata=meta)]), step)

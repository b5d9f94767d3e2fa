"""Input normalisation: fit statistics on the training part, apply them anywhere.

    config = fit(X_train, mode="channel", grayscale=False)   # JSON-serialisable dict
    Z_train = apply(X_train, config)                          # float32 (N, input_dim(config))
    Z_test = apply(X_test, config)                            # uses the *training* statistics

    prep = device_prep(config)                     # hashable: a static field of a jitted step
    zb = apply_device(xb_uint8, prep)              # the same numbers, per batch, in JAX

Inputs are uint8 images (N, 32, 32, 3). With `grayscale`, each image first
becomes its luminance 0.299 R + 0.587 G + 0.114 B (one channel). Then `mode`:

    "scale"    x / 127.5 - 1, i.e. pixels in [-1, 1] (the seed notebook's choice)
    "channel"  (x - mean_c) / std_c, mean and std per channel over all pixels of
               the training images passed to `fit` (std floored at `eps`)
    "image"    each image minus its own mean, divided by its own std + eps
               (over all its pixels and channels, pixels scaled to [0, 1] first);
               needs no statistics
    "local"    local contrast normalisation (Jarrett et al. 2009, as Sermanet et
               al. 2012 used it on SVHN): each pixel minus the Gaussian-weighted
               mean of its neighbourhood (all channels), divided by the weighted
               standard deviation there, or by that image's mean of those
               standard deviations where it is larger (so flat regions are not
               blown up into noise); the Gaussian has `sigma` = LOCAL_SIGMA
               pixels and is cut at the border and renormalised; needs no
               statistics

The output is flattened to (N, D), D = 32 * 32 * C with C = 1 (grayscale) or 3,
in (height, width, channel) order. `fit` and `apply` are NumPy, computed in
chunks of images so a whole dataset never needs a float64 copy, and
deterministic.

`apply_device` is the same formula in `jax.numpy`, for use inside a compiled
step: the dataset stays on the device as uint8 rows (N, 3072), a free view
`X.reshape(N, -1)` of what `svhn_jax.data.load` returns, 4x smaller than
float32, and each batch is normalised as it is used. Grayscale is computed
per batch too: rounding luminance to uint8 would change the numbers. JAX is
imported inside `apply_device` only, so importing this module stays fast.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import SvhnJaxError

MODES = ("scale", "channel", "image", "local")
LOCAL = ("local",)   # modes whose pixel values depend on their neighbours' (see `apply_device`)
LUMA = (0.299, 0.587, 0.114)
EPS = {"channel": 1e-6, "image": 1e-6, "local": 1e-6}
LOCAL_SIGMA = 3.0   # pixels; chosen on validation (README, "How the presets were chosen")
CHUNK = 4096  # images per chunk: 4096 * 3072 * 4 bytes = 48 MiB of float32

__all__ = ["MODES", "LOCAL", "fit", "apply", "input_dim", "DevicePrep", "device_prep", "apply_device",
           "gaussian_rows"]


def _check_images(X, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 4 or X.shape[1:] != (32, 32, 3) or X.dtype != np.uint8:
        raise SvhnJaxError(
            f"{what} expects uint8 images of shape (N, 32, 32, 3), got {X.dtype} "
            f"{X.shape}. Fix: load them with svhn_jax.data.load, which validates them.")
    return X


def _check_config(config) -> dict:
    if not isinstance(config, dict) or "mode" not in config:
        raise SvhnJaxError(f"not a preprocessing config: {config!r}. Fix: make one with "
                           f"svhn_jax.data.preprocess.fit(X_train, mode=..., grayscale=...).")
    if config["mode"] not in MODES:
        raise SvhnJaxError(f"unknown preprocessing mode {config['mode']!r}. Fix: use one "
                           f"of {', '.join(MODES)}.")
    if config["mode"] == "channel" and not ("mean" in config and "std" in config):
        raise SvhnJaxError("a 'channel' config needs its 'mean' and 'std'. Fix: make it "
                           "with svhn_jax.data.preprocess.fit(X_train, mode='channel').")
    return config


def gaussian_rows(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32: row i holds exp(-(i - j)^2 / (2 sigma^2)) over j, normalised to
    sum 1. `G @ a @ G.T` smooths an (n, n) image with a Gaussian cut at the border:
    its weights over the pixels inside the image sum to 1 at every pixel."""
    i = np.arange(n, dtype=np.float64)
    g = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma ** 2))
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _local(px, sigma: float, eps: float, xp=np, einsum=None):
    """The local mode of images px (n, 32, 32, C) float32 in pixel units, in NumPy
    (xp=np) or jax.numpy (xp=jnp, einsum: jnp.einsum at full float32 precision).

    With G the Gaussian's rows, blur(a) = G a G^T per image:
      m = blur(mean over channels of px)          the local mean
      v = px - m
      s = sqrt(blur(mean over channels of v^2))   the local standard deviation
      out = v / max(s, mean of s over the image, 255 eps)
    Each image's first pixel is subtracted before blurring (which changes nothing,
    as G's rows sum to 1): a constant image then gives exactly 0, not the
    round-off of G's sums divided by 255 eps.
    """
    einsum = einsum or (lambda *a: np.einsum(*a, optimize=True))
    g = gaussian_rows(px.shape[1], sigma)
    # the images are not a batch axis of the products: on XLA:CPU each output pixel is
    # then the same 32-term sum whatever the number of images, so a batch equals a
    # whole set bit for bit (elsewhere up to float32 rounding)
    blur = lambda a: einsum("nik,lk->nil", einsum("ij,njk->nik", g, a), g)
    px = px - px[:, :1, :1, :1]
    v = px - blur(px.mean(axis=3))[..., None]
    s = xp.sqrt(xp.maximum(blur((v * v).mean(axis=3)), np.float32(0.0)))
    floor = xp.maximum(s.mean(axis=(1, 2), keepdims=True), np.float32(255.0 * eps))
    return v / xp.maximum(s, floor)[..., None]


def _to_float(Xc: np.ndarray, grayscale: bool) -> np.ndarray:
    """uint8 (n, 32, 32, 3) -> float32 (n, 32, 32, C), luminance when grayscale."""
    if grayscale:
        x = Xc.astype(np.float32)
        return (x @ np.asarray(LUMA, np.float32))[..., None]
    return Xc.astype(np.float32)


def _channel_stats(X: np.ndarray, grayscale: bool, sum_over=None) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std over all pixels of X, in pixel units.

    RGB: exact, from per-channel histograms of the uint8 values. Grayscale:
    float64 sums of the float32 luminance, chunk by chunk. sum_over adds the
    sums of every process (see `fit`).
    """
    sum_over = sum_over or (lambda a: a)
    if not grayscale:
        hist = np.zeros((3, 256), np.int64)
        for s in range(0, X.shape[0], CHUNK):
            px = X[s:s + CHUNK].reshape(-1, 3)
            for c in range(3):
                hist[c] += np.bincount(px[:, c], minlength=256)
        hist = sum_over(hist)
        v = np.arange(256, dtype=np.float64)
        count = hist[0].sum()
        mean = hist @ v / count
        var = hist @ (v * v) / count - mean ** 2
    else:
        sums = np.zeros(3)   # pixels, their total, the total of their squares
        for s in range(0, X.shape[0], CHUNK):
            lum = _to_float(X[s:s + CHUNK], True).astype(np.float64)
            sums += (lum.size, lum.sum(), np.square(lum).sum())
        count, total, total_sq = sum_over(sums)
        mean = np.array([total / count])
        var = np.array([total_sq / count]) - mean ** 2
    std = np.sqrt(np.maximum(var, 0.0))
    return [float(x) for x in mean], [float(x) for x in std]


def fit(X_train, *, mode: str, grayscale: bool = False, sum_over=None) -> dict:
    """Fit a preprocessing config on training images.

    Args:
      X_train: uint8 (N, 32, 32, 3) -- the training part only, never test data.
      mode: "scale", "channel" or "image".
      grayscale: convert to luminance first (C = 1 instead of 3).
      sum_over: with several processes each holding some of the training
        images, a function that sums an array over the processes
        (run.processes.sum_over_processes): the statistics are then those of all
        of them. X_train may then be empty in some processes.

    Returns:
      a JSON-serialisable dict: {"mode", "grayscale", "channels"} plus, for
      "channel", "mean" and "std" (lists of C floats, pixel units 0..255,
      computed in float64) and "eps"; for "image", "eps"; for "local", "eps"
      and "sigma".
    """
    if mode not in MODES:
        raise SvhnJaxError(f"unknown preprocessing mode {mode!r}. Fix: use one of "
                           f"{', '.join(MODES)}.")
    X = _check_images(X_train, "preprocess.fit")
    if X.shape[0] == 0 and sum_over is None:
        raise SvhnJaxError("preprocess.fit needs at least one training image.")
    grayscale = bool(grayscale)
    c = 1 if grayscale else 3
    config = {"mode": mode, "grayscale": grayscale, "channels": c}
    if mode == "channel":
        mean, std = _channel_stats(X, grayscale, sum_over)
        config.update(mean=mean, std=std, eps=EPS["channel"])
    elif mode == "image":
        config["eps"] = EPS["image"]
    elif mode == "local":
        config.update(eps=EPS["local"], sigma=LOCAL_SIGMA)
    return config


def input_dim(config: dict) -> int:
    """Number of features per image after `apply`: 32 * 32 * C."""
    _check_config(config)
    return 32 * 32 * (1 if config.get("grayscale") else 3)


def apply(X, config: dict) -> np.ndarray:
    """Preprocess images with a config from `fit`.

    Args:
      X: uint8 (N, 32, 32, 3).
      config: from `fit` (or its JSON round trip).

    Returns:
      float32 (N, D), D = input_dim(config), rows in the order of X.
    """
    config = _check_config(config)
    X = _check_images(X, "preprocess.apply")
    mode, gray = config["mode"], bool(config.get("grayscale"))
    n, d = X.shape[0], input_dim(config)
    out = np.empty((n, d), np.float32)
    if mode == "channel":
        mean = np.asarray(config["mean"], np.float32)
        inv = 1.0 / np.maximum(np.asarray(config["std"], np.float32),
                               np.float32(config.get("eps", EPS["channel"])))
    eps = float(config.get("eps", EPS.get(mode, 0.0)))
    for s in range(0, n, CHUNK):
        Xc = X[s:s + CHUNK]
        m = Xc.shape[0]
        o = out[s:s + m].reshape(m, 32, 32, -1)  # a view: results land in `out`
        if gray:
            np.matmul(Xc.astype(np.float32), np.asarray(LUMA, np.float32)[:, None], out=o)
        else:
            np.copyto(o, Xc)  # uint8 -> float32, exact
        if mode == "local":
            o[...] = _local(o, float(config.get("sigma", LOCAL_SIGMA)), eps)
        elif mode == "scale":
            o /= np.float32(127.5)
            o -= np.float32(1.0)
        elif mode == "channel":
            o -= mean
            o *= inv
        else:  # image: in pixel units, (x - m) / (s + 255 eps) == (x/255 - m/255) / (s/255 + eps)
            x = out[s:s + m]
            # float64 sums of float32 pixels are exact here, so a constant image
            # gives exactly 0 (not float32 round-off blown up by 1 / eps)
            mu = (x.sum(axis=1, dtype=np.float64) / d).astype(np.float32)
            x -= mu[:, None]
            sd = np.sqrt(np.einsum("ij,ij->i", x, x) / np.float64(d))
            x *= (1.0 / (sd + 255.0 * eps)).astype(np.float32)[:, None]
    return out


class DevicePrep(NamedTuple):
    """A fitted config as plain, hashable constants for a compiled step.

    mode: "scale", "channel" or "image"; grayscale: luminance first.
    mean, inv_std: per channel (C floats, pixel units), used by "channel": the
      float32 values `apply` uses, 1 / max(std, eps) included; () otherwise.
    eps: the "image" and "local" modes' floor (0.0 otherwise).
    sigma: the "local" mode's Gaussian, in pixels (0.0 otherwise).
    """

    mode: str
    grayscale: bool
    mean: tuple[float, ...] = ()
    inv_std: tuple[float, ...] = ()
    eps: float = 0.0
    sigma: float = 0.0


def device_prep(config: dict) -> DevicePrep:
    """Freeze a config from `fit` (or its JSON round trip) into a `DevicePrep`."""
    config = _check_config(config)
    mode, gray = config["mode"], bool(config.get("grayscale"))
    if mode == "channel":
        mean = np.asarray(config["mean"], np.float32)
        inv = 1.0 / np.maximum(np.asarray(config["std"], np.float32),
                               np.float32(config.get("eps", EPS["channel"])))
        return DevicePrep(mode, gray, tuple(map(float, mean)), tuple(map(float, inv)))
    if mode == "image":
        return DevicePrep(mode, gray, eps=float(config.get("eps", EPS["image"])))
    if mode == "local":
        return DevicePrep(mode, gray, eps=float(config.get("eps", EPS["local"])),
                          sigma=float(config.get("sigma", LOCAL_SIGMA)))
    return DevicePrep(mode, gray)


def apply_device(x, prep, shifted=None):
    """`apply` in jax.numpy, for uint8 batches inside `jit`.

    Args:
      x: uint8 (B, 32, 32, 3) or (B, 3072) (the same rows flattened).
      prep: a `DevicePrep`, or a config dict from `fit` (then converted here;
        pass a `DevicePrep` to keep it a static, hashable argument).
      shifted: None, or (xs, valid): xs uint8 (B, 3072), the images of x
        translated, and valid bool (B, 1024), True where a pixel of xs lies
        inside its image (the others are filled in). The result is then that of
        x translated the same way with zeros filled in, bit for bit: each pixel
        of xs is normalised with its image's statistics, which the image mode
        takes from x, and a filled-in pixel is 0. Not for the modes in LOCAL,
        where a pixel's value depends on its neighbours: shift their output.

    Returns:
      float32 (B, D), D = input_dim: equal to `apply` up to float32 rounding,
      since only the order of float32 operations differs (the three-term
      luminance, the image mode's sums over D values).

    Luminance is three multiply-adds, not a matrix product: GPUs multiply
    float32 matrices at reduced precision by default. The image mode's mean
    is `x[:, :1] + mean(x - x[:, :1])`: a constant image then gives exactly 0,
    as `apply` does, instead of float32 round-off divided by 255 * eps.
    """
    import jax.numpy as jnp

    if isinstance(prep, dict):
        prep = device_prep(prep)
    if x.dtype != jnp.uint8 or x.shape[1:] not in ((32, 32, 3), (3072,)):
        raise SvhnJaxError(
            f"apply_device expects uint8 images (B, 32, 32, 3) or (B, 3072), got "
            f"{x.dtype} {x.shape}. Fix: keep the images as svhn_jax.data.load returns "
            f"them, X.reshape(N, -1) at most.")
    n = x.shape[0]

    def pixels(u):   # (B, 1024, C) float32
        px = jnp.asarray(u).reshape(n, 32 * 32, 3).astype(jnp.float32)
        if prep.grayscale:
            r, g, b = (np.float32(v) for v in LUMA)
            px = (px[..., 0] * r + px[..., 1] * g + px[..., 2] * b)[..., None]
        return px

    if shifted is not None and prep.mode in LOCAL:
        raise SvhnJaxError(f"the {prep.mode!r} preprocessing depends on each pixel's "
                           "neighbours, so it cannot normalise shifted images with the "
                           "unshifted statistics. Fix: shift its output instead.")
    px = pixels(x)
    if prep.mode == "local":
        einsum = lambda *a: jnp.einsum(*a, precision="highest")
        return _local(px.reshape(n, 32, 32, -1), prep.sigma, prep.eps, jnp, einsum).reshape(n, -1)
    if prep.mode == "scale":
        normalise = lambda p: p / np.float32(127.5) - np.float32(1.0)
    elif prep.mode == "channel":
        normalise = lambda p: (p - np.asarray(prep.mean, np.float32)) * np.asarray(prep.inv_std, np.float32)
    else:
        flat = px.reshape(n, -1)
        d = np.float32(flat.shape[1])
        first = flat[:, :1]
        mean = first + jnp.sum(flat - first, axis=1, keepdims=True) / d
        centred = flat - mean
        sd = jnp.sqrt(jnp.sum(centred * centred, axis=1, keepdims=True) / d)
        scale = np.float32(1.0) / (sd + np.float32(255.0 * prep.eps))
        normalise = lambda p: (p.reshape(n, -1) - mean) * scale
    if shifted is None:
        return normalise(px).reshape(n, -1)
    xs, valid = shifted
    if px.shape[2] > 1:   # one flag per feature; kept two-dimensional, which XLA:CPU vectorises
        valid = jnp.repeat(valid, px.shape[2], axis=1)
    return jnp.where(valid, normalise(pixels(xs)).reshape(n, -1), np.float32(0.0))

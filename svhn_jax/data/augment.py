"""Random affine and elastic distortions and shifted test-time copies of feature images, in
jax.numpy, for use inside a compiled step.

    matrices(u, rotate, scale, shear)   (B, 2, 2) sampling matrices from uniforms u (B, 3)
    elastic_field(noise)                (B, 2, H W) smooth displacements from noise (B, 2, H, W)
    warp(x, A, t, image_shape, disp)    x (B, D) resampled bilinearly, zero-filled
    translate(x, dy, dx, image_shape)   x (B, D) moved by whole pixels, zero-filled
    TTA_OFFSETS                         the copies test-time averaging scores

The images are rows of normalised features (B, D), D = H * W * C in (row, column,
channel) order, as data.preprocess.apply_device returns them: a pixel outside the
image is filled with 0, the value that normalised shifts fill in.

Geometry of `warp`. With centre c = ((H - 1) / 2, (W - 1) / 2), output pixel
p = (row, column) takes the input's value at

    q = A (p - c) + c + t (+ disp(p), an elastic displacement, when given)

interpolated bilinearly: with q = q0 + f, q0 = floor(q), f in [0, 1)^2, the
value is sum over the 4 neighbours q0 + (i, j), i, j in {0, 1}, of
(i ? f_r : 1 - f_r) (j ? f_c : 1 - f_c) x[q0 + (i, j)], a neighbour outside the
image counting as 0. With A = I and t whole pixels, q = p + t exactly and the
weights are exactly 1 and 0: the zero-filled translation by t (train._shift with
offsets t + shift) bit for bit.

`matrices` draws A = R(theta) Sh(s) / z, one per image, from u uniform in
[-1, 1]: theta = rotate * u0 degrees, z = 1 + scale * u1 (z > 1 magnifies),
s = shear * u2, with (in (row, column) coordinates)

    R(theta) = [[cos, -sin], [sin, cos]],   Sh(s) = [[1, s], [0, 1]]

a vertical shear: the column d columns from the centre samples rows moved by s d.

`elastic_field` (Simard et al. 2003): noise uniform in [-1, 1] per pixel and
direction, smoothed by a Gaussian of ELASTIC_SIGMA pixels along rows and columns
(G n G^T, each row of G normalised to sum 1, truncated at the border), divided by
the standard deviation that smoothing leaves away from the border,
sqrt(1/3) sum_i g_i^2: the field's entries have about unit spread, so `--elastic a`
moves pixels by about a pixels (standard deviation), smoothly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .preprocess import gaussian_rows

# (rows, columns) of each copy that test-time averaging scores: the image, then its
# whole-pixel shifts by one pixel, the four sides before the four corners.
TTA_OFFSETS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))

ELASTIC_SIGMA = 4.0   # pixels: Simard et al.'s choice for 28 x 28 digits


def elastic_field(noise):
    """Smooth displacements (B, 2, H W), about unit spread, from noise (B, 2, H, W)
    uniform in [-1, 1] (the module's docstring)."""
    _, _, h, w = noise.shape
    k = np.arange(-3 * ELASTIC_SIGMA, 3 * ELASTIC_SIGMA + 1)   # the whole kernel, no border
    g = np.exp(-k ** 2 / (2 * ELASTIC_SIGMA ** 2))
    spread = np.sqrt(1 / 3) * np.sum((g / g.sum()) ** 2)
    g_h, g_w = gaussian_rows(h, ELASTIC_SIGMA), gaussian_rows(w, ELASTIC_SIGMA)
    field = jnp.einsum("ij,bdjk,lk->bdil", g_h, noise, g_w, precision="highest")
    return (field / np.float32(spread)).reshape(noise.shape[0], 2, h * w)


def matrices(u, rotate: float, scale: float, shear: float):
    """(B, 2, 2) float32 sampling matrices A = R(theta) Sh(s) / z from u (B, 3) in
    [-1, 1] (see the module's docstring); rotate in degrees."""
    theta = np.float32(np.deg2rad(rotate)) * u[:, 0]
    z = np.float32(1.0) + np.float32(scale) * u[:, 1]
    s = np.float32(shear) * u[:, 2]
    cos, sin = jnp.cos(theta) / z, jnp.sin(theta) / z
    # R @ [[1, s], [0, 1]] = [[cos, cos s - sin], [sin, sin s + cos]]
    return jnp.stack([jnp.stack([cos, cos * s - sin], -1), jnp.stack([sin, sin * s + cos], -1)], -2)


def warp(x, A, t, image_shape, disp=None):
    """x (B, D) float32 feature images resampled at q = A (p - c) + c + t (+ disp):
    A (B, 2, 2), t (B, 2) (rows, columns), disp None or (B, 2, H W) per output pixel
    -> (B, D). Bilinear, zero outside the image.

    The images are padded with zeros (1 pixel before, 2 after) and q clamped to
    [-1, H] x [-1, W]: a clamped coordinate has all its weight on a zero of the
    padding, so the 4 neighbours are always inside the padded image and need no
    masks. The coordinates are plain multiply-adds, not a matrix product, which GPUs
    would compute at reduced precision by default. Speed, not maths: the gather is
    fenced off by optimization barriers, so that XLA:CPU does not fuse it with the
    arithmetic around it into one unvectorised loop (see step.train._shift_images)."""
    import jax

    h, w, c = image_shape
    b = x.shape[0]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32) - np.float32((h - 1) / 2),
                             np.arange(w, dtype=np.float32) - np.float32((w - 1) / 2), indexing="ij")
    pr, pc = rows.reshape(1, -1), cols.reshape(1, -1)        # p - c, (1, H W)
    qr = A[:, 0, 0:1] * pr + A[:, 0, 1:2] * pc + (np.float32((h - 1) / 2) + t[:, 0:1])
    qc = A[:, 1, 0:1] * pr + A[:, 1, 1:2] * pc + (np.float32((w - 1) / 2) + t[:, 1:2])
    if disp is not None:
        qr, qc = qr + disp[:, 0], qc + disp[:, 1]
    qr, qc = jnp.clip(qr, -1, h), jnp.clip(qc, -1, w)
    r0, c0 = jnp.floor(qr), jnp.floor(qc)
    fr, fc = qr - r0, qc - c0
    row = w + 3                                               # of the padded image
    i00 = (r0.astype(jnp.int32) + 1) * row + (c0.astype(jnp.int32) + 1)
    if c > 1:   # one gather index and weight per feature: (B, H W C)
        i00 = (i00[..., None] * c + np.arange(c, dtype=np.int32)).reshape(b, -1)
        fr, fc = jnp.repeat(fr, c, axis=1), jnp.repeat(fc, c, axis=1)
    padded = jnp.pad(x.reshape(b, h, w, c), ((0, 0), (1, 2), (1, 2), (0, 0))).reshape(b, -1)
    padded, i00 = jax.lax.optimization_barrier((padded, i00))
    near = jax.lax.optimization_barrier([jnp.take_along_axis(padded, i00 + d * c, axis=1)
                                         for d in (0, 1, row, row + 1)])
    gr, gc = 1 - fr, 1 - fc
    return near[0] * (gr * gc) + near[1] * (gr * fc) + near[2] * (fr * gc) + near[3] * (fr * fc)


def translate(x, dy: int, dx: int, image_shape):
    """x (B, D) feature images moved by whole pixels, dy rows down and dx columns
    right (negative: up, left), zero-filled -> (B, D)."""
    h, w, _ = image_shape
    imgs = x.reshape(x.shape[0], h, w, -1)
    imgs = jnp.pad(imgs, ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0)))
    r, c = max(-dy, 0), max(-dx, 0)
    return imgs[:, r:r + h, c:c + w].reshape(x.shape)

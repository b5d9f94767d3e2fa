"""Jitted training: a train-state pytree, one step in either gradient mode, and
whole epochs compiled into a single `lax.scan`.

The pieces, all pure:

    StepConfig   static settings that shape the compiled program (hashable)
    Hyper        traced hyperparameters (learning rate, L2): a sweep vmaps over them
    TrainState   params, BatchNorm state, optimizer state, step counter, PRNG key
    init_state   -> TrainState
    epoch_order  the batch order of an epoch, a pure function of (key, epoch)
    run_steps    `count` steps of training in one compiled scan, with the
                 per-step gradient check inside it when `check_every` asks

Data live on the device as one array passed to `run_steps` as an argument
(never closed over, which would bake it into the program); each step gathers
its batch through the epoch's permutation. With `StepConfig.prep` the array
holds the uint8 images (N, 3072), a quarter of float32's memory, and each
batch is normalised as it is gathered (data.preprocess.apply_device);
without it, float32 features (N, D) ready to use. Every random choice (init,
data order, augmentation) is derived from the seed and the step number, so a
run resumed from a checkpoint repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..data import augment, preprocess
from ..nn import layers, losses, model, optim, schedules, stepcheck
from ..errors import SvhnJaxError


class StepConfig(NamedTuple):
    """Static training settings: a change here means a new compiled program."""

    spec: tuple                       # model.make_spec(...)
    optimizer: str = "adam"           # a name in optim.OPTIMIZERS
    schedule: schedules.ScheduleSpec = schedules.ScheduleSpec()   # settings.schedule builds it
    batch: int = 64
    grad_mode: str = "manual"         # "manual" (hand VJPs) or "autodiff" (jax.grad)
    shift: int = 0                    # random-shift augmentation, pixels (0: off)
    image_shape: tuple = (32, 32, 3)  # how a row of X unflattens, for augmentation
    check_every: int = 0              # gradient check on steps i % check_every == 0 of an epoch (0: off)
    keep_grads: bool = False          # also return the gradient at the segment's end (TensorBoard)
    prep: Any = None                  # preprocess.DevicePrep: X is uint8, normalised per batch
    rotate: float = 0.0               # random affine distortions (data.augment; 0: off): degrees,
    scale: float = 0.0                # zoom fraction,
    shear: float = 0.0                # shear fraction,
    elastic: float = 0.0              # elastic displacement, pixels


class Hyper(NamedTuple):
    """Hyperparameters that enter the program as values, so one compilation serves
    every learning rate, L2 strength, label smoothing and dropout rate (and jax.vmap
    trains many at once). step.settings.hyper fills each field from the RunConfig
    field of the same name; every field but lr is a keyword of the model's loss
    (nn.model.loss; a dropout rate is named after its layer). A field whose default
    is None is a term of the loss that is left out of the program (None) where every
    model has it 0."""

    lr: Any
    reg: Any
    smoothing: Any = None
    dropout: Any = None
    input_dropout: Any = None


def loss_settings(hp: Hyper) -> dict:
    """The hyperparameters of the loss: every field of hp but the learning rate."""
    return {k: v for k, v in hp._asdict().items() if k != "lr"}


def noise_key(state: "TrainState", cfg: StepConfig):
    """The key of the step's dropout masks (layer i of the network then folds in i);
    None for a network without randomness, which then has nothing of it in its
    program."""
    if not any(layers.LAYERS[name].rate for name, _ in cfg.spec):
        return None
    return drawn_key(state.key, "dropout", state.step)


class TrainState(NamedTuple):
    params: Any      # tuple of dicts, see model.init
    bn_state: Any    # BatchNorm running statistics, same layout
    opt_state: Any   # NamedTuple from optim; its `step` drives the schedule
    step: Any        # int32 scalar: updates done so far
    key: Any         # base PRNG key: each use draws from drawn_key(key, use, step or epoch)


# Each random use of the run's key folds in its own tag first, so no two uses share
# numbers; a new use takes a new tag here.
KEY_TAGS = {"init": 0, "order": 1, "shift": 2, "check": 3, "eval_rows": 4, "affine": 5,
            "dropout": 6, "elastic": 7}


def drawn_key(key, use: str, n):
    """The key of random use `use` (a KEY_TAGS name) at global step or epoch n."""
    return jax.random.fold_in(jax.random.fold_in(key, KEY_TAGS[use]), n)


def check_config(cfg: StepConfig) -> StepConfig:
    """Clear errors for settings that would otherwise fail inside the trace."""
    if cfg.grad_mode not in model.GRAD_MODES:
        raise SvhnJaxError(f"unknown gradient mode {cfg.grad_mode!r}; use 'manual' or 'autodiff'")
    if cfg.optimizer not in optim.OPTIMIZERS:
        raise SvhnJaxError(f"unknown optimizer {cfg.optimizer!r}; choose one of "
                           f"{', '.join(optim.OPTIMIZERS)}")
    if not isinstance(cfg.batch, int) or cfg.batch < 1:
        raise SvhnJaxError(f"batch size must be a positive integer, got {cfg.batch!r}")
    if cfg.shift < 0 or cfg.shift >= min(cfg.image_shape[:2]):
        raise SvhnJaxError(f"shift must be between 0 and {min(cfg.image_shape[:2]) - 1} pixels, "
                           f"got {cfg.shift}")
    for name, value, ok, bound in (("rotate", cfg.rotate, cfg.rotate <= 45, "<= 45 (degrees)"),
                                   ("scale", cfg.scale, cfg.scale < 1, "< 1"),
                                   ("shear", cfg.shear, cfg.shear < 1, "< 1"),
                                   ("elastic", cfg.elastic, cfg.elastic <= 8, "<= 8 (pixels)")):
        if not (value >= 0 and ok):
            raise SvhnJaxError(f"{name} must be >= 0 and {bound}, got {value}; 0 turns it off")
    if not isinstance(cfg.check_every, int) or cfg.check_every < 0:
        raise SvhnJaxError(f"check_every must be an integer >= 0, got {cfg.check_every!r}")
    make_optimizer(cfg, 1.0)  # validates the schedule's name and options
    return cfg


def make_optimizer(cfg: StepConfig, lr) -> optim.Optimizer:
    """The optimizer for a (possibly traced) base learning rate `lr`."""
    return optim.get(cfg.optimizer, schedules.build(cfg.schedule, lr))


def init_state(seed: int, cfg: StepConfig, in_dim: int, hp: Hyper) -> TrainState:
    """Fresh parameters (from the seed), optimizer state and step 0."""
    key = jax.random.key(seed)
    params, bn_state = model.init(jax.random.fold_in(key, KEY_TAGS["init"]), cfg.spec, in_dim)
    opt_state = make_optimizer(cfg, hp.lr).init(params)
    return TrainState(params, bn_state, opt_state, jnp.zeros((), jnp.int32), key)


def steps_per_epoch(n: int, batch: int) -> int:
    """ceil(n / batch): the last batch is completed with the epoch's first images."""
    return -(-n // batch)


def epoch_order(key, epoch, n: int, batch: int):
    """Indices (steps_per_epoch * batch,) int32 of one epoch's batches, in order.

    A fresh permutation per epoch; the tail is filled up from the start of the
    same permutation, so every batch has the same shape (no recompilation) and
    every image is seen at least once per epoch.
    """
    perm = jax.random.permutation(drawn_key(key, "order", epoch), n)
    pad = steps_per_epoch(n, batch) * batch - n
    return jnp.concatenate([perm, perm[:pad]]).astype(jnp.int32)


def _offsets(key, step, n: int, cfg: StepConfig):
    """The random shifts of global `step`'s n images: (n, 2) int32 in [0, 2 shift]
    (rows, columns), an image moving by offset - shift."""
    return jax.random.randint(drawn_key(key, "shift", step), (n, 2), 0, 2 * cfg.shift + 1)


def _shift(xb, offsets, cfg: StepConfig):
    """Translate each feature image by its offset - shift, zero-filled."""
    h, w, c = cfg.image_shape
    s = cfg.shift
    imgs = jnp.pad(xb.reshape(-1, h, w, c), ((0, 0), (s, s), (s, s), (0, 0)))
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(imgs, offsets).reshape(xb.shape)


def _shift_images(x, offsets, s: int, i):
    """uint8 image rows x (B, 3072) translated as _shift translates features ->
    (the translated rows (B, 3072), valid (B, 1024): True where a pixel came from
    inside its image), for preprocess.apply_device(..., shifted=)."""
    b = x.shape[0]

    def gather():   # rows of 96 bytes: the gather's inner loop runs along a row
        imgs = jnp.pad(x.reshape(b, 32, 96), ((0, 0), (s, s), (3 * s, 3 * s)))
        crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], 3 * o[1]), (32, 96))
        return jax.vmap(crop)(imgs, offsets)

    # Speed, not maths: XLA:CPU fuses a gather with the arithmetic around it into one
    # loop that runs element by element, unvectorised (the normalisation fused into the
    # shift's gather took more than half as long as the step's products). A conditional
    # is a boundary fusion does not cross: the gather moves bytes alone, the
    # normalisation runs as a vectorised loop of its own. Its predicate is always true;
    # it depends on the step's index i alone, which vmapped models share, so it stays a
    # branch. Other backends fuse a gather well, and would wait on the predicate.
    rows = (jax.lax.cond(i >= 0, gather, lambda: jnp.zeros((b, 32, 96), x.dtype))
            if jax.default_backend() == "cpu" else gather())
    inside = lambda o: (jnp.arange(32) + o[:, None] - s >= 0) & (jnp.arange(32) + o[:, None] - s < 32)
    valid = inside(offsets[:, 0])[:, :, None] & inside(offsets[:, 1])[:, None, :]
    return rows.reshape(b, -1), valid.reshape(b, 1024)


def distorts(cfg: StepConfig) -> bool:
    """Whether the step applies random affine or elastic distortions."""
    return bool(cfg.rotate or cfg.scale or cfg.shear or cfg.elastic)


def _distort(xb, key, step, cfg: StepConfig):
    """Feature images xb (B, D) under global `step`'s random affine maps (and
    elastic displacements, with cfg.elastic), each composed with the image's random
    shift (the offsets `_offsets` draws, so a shift is the same with or without
    distortions): data.augment.warp, zero-filled.
    Drawn for the global batch, row by row: a function of the key, the step and
    the row, never of the devices the batch is split over."""
    b = xb.shape[0]
    u = jax.random.uniform(drawn_key(key, "affine", step), (b, 3),
                           minval=-1.0, maxval=1.0)
    shift = (_offsets(key, step, b, cfg) - cfg.shift).astype(jnp.float32)
    disp = None
    if cfg.elastic:
        noise = jax.random.uniform(drawn_key(key, "elastic", step),
                                   (b, 2) + cfg.image_shape[:2], minval=-1.0, maxval=1.0)
        disp = cfg.elastic * augment.elastic_field(noise)
    return augment.warp(xb, augment.matrices(u, cfg.rotate, cfg.scale, cfg.shear), shift,
                        cfg.image_shape, disp)


def features(x, prep):
    """Rows of a data array as the model's float32 input (B, D): uint8 images
    normalised with `prep` (a preprocess.DevicePrep), or float32 features as
    they are (prep None)."""
    if prep is not None:
        return preprocess.apply_device(x, prep)
    if x.dtype == jnp.uint8:
        raise SvhnJaxError("uint8 images reached the model without their preprocessing: "
                           "pass preprocess.device_prep(config) as StepConfig.prep / prep=")
    return x


def put_images(X):
    """uint8 images (N, 32, 32, 3) as rows (N, 3072) on the default device. On a
    CPU the device shares the host array's memory when it is 64-byte aligned, as
    data.load allocates prepared SVHN, .mat and synthetic images: the training set
    is not held twice. So never write to X afterwards: the device would see it."""
    return jax.device_put(X.reshape(len(X), -1))


def get_batch(X, y, order, i, key, step, cfg: StepConfig):
    """Batch i of an epoch (augmented with the key of global `step`): xb (B, D), yb (B,).

    With distortions (cfg.rotate, scale, shear, elastic) the normalised images are
    warped, their shifts composed into the same bilinear resampling (`_distort`).
    Otherwise:
    uint8 images are shifted before they are normalised, with the statistics of
    the unshifted images (preprocess.apply_device(shifted=)): the same numbers as
    normalising, then shifting, and the gather moves a quarter of the bytes. The
    local modes (preprocess.LOCAL), whose pixels depend on their neighbours, are
    normalised, then shifted."""
    idx = jax.lax.dynamic_slice_in_dim(order, i * cfg.batch, cfg.batch)
    x, yb = X[idx], y[idx]
    if distorts(cfg):
        return _distort(features(x, cfg.prep), key, step, cfg), yb
    if not cfg.shift:
        return features(x, cfg.prep), yb
    offsets = _offsets(key, step, cfg.batch, cfg)
    if cfg.prep is None or cfg.prep.mode in preprocess.LOCAL:
        return _shift(features(x, cfg.prep), offsets, cfg), yb
    return preprocess.apply_device(x, cfg.prep, shifted=_shift_images(x, offsets, cfg.shift, i)), yb


def gradients(state: TrainState, hp: Hyper, xb, yb, cfg: StepConfig, loss_and_grads=None):
    """(grads, new BatchNorm state, logits) of the batch in cfg.grad_mode.

    loss_and_grads replaces model.GRAD_MODES[cfg.grad_mode] (same signature):
    `parallel` passes the hand backward sharded over a mesh."""
    loss_and_grads = loss_and_grads or model.GRAD_MODES[cfg.grad_mode]
    _, grads, bn_state, logits = loss_and_grads(state.params, state.bn_state, xb, yb, cfg.spec, train=True,
                                                key=noise_key(state, cfg), **loss_settings(hp))
    return grads, bn_state, logits


def apply_gradients(state: TrainState, hp: Hyper, grads, bn_state, logits, yb, cfg: StepConfig):
    """The optimizer update with `grads` -> (new state, (cross-entropy, correct count))."""
    params, opt_state = make_optimizer(cfg, hp.lr).update(grads, state.opt_state, state.params)
    ce, _ = losses.softmax_cross_entropy(logits, yb)
    correct = jnp.sum(jnp.argmax(logits, axis=1) == yb)
    return TrainState(params, bn_state, opt_state, state.step + 1, state.key), (ce, correct)


def train_step(state: TrainState, hp: Hyper, xb, yb, cfg: StepConfig, loss_and_grads=None):
    """One update on the batch (xb, yb) -> (new state, (cross-entropy, correct count))."""
    return apply_gradients(state, hp, *gradients(state, hp, xb, yb, cfg, loss_and_grads), yb, cfg)


def check_key(key, step):
    """The key of the check's random direction at global `step`."""
    return drawn_key(key, "check", step)


def checked_step(state: TrainState, hp: Hyper, xb, yb, i, cfg: StepConfig, loss_and_grads=None):
    """`train_step`, preceded on steps i % cfg.check_every == 0 of the epoch by
    stepcheck.check of the gradient this very update applies, on its batch
    -> (new state, (cross-entropy, correct count, stepcheck.StepCheck)).

    The check only reads: the update is the one `train_step` makes, bit for bit.
    Between checks a lax.cond skips it. Its predicate depends on the step index
    alone, which a sweep's configurations share (vmap maps states and
    hyperparameters, not i), so under vmap it stays a real branch; a predicate
    that varied across the mapped axis would become a select running the check
    on every step.

    The check computes in float64 inside a jax.enable_x64 scope while the rest
    traces in float32 (see stepcheck.check). A transformation applied to the
    traced check must run inside that scope too: vmap's rule for the cond runs
    when the cond is built, hence the scope around it; vmap of a whole scan
    would run its rule later, outside any scope, which is why `parallel.segment`
    scans a vmapped step rather than vmapping a scan.
    """
    grads, bn_state, logits = gradients(state, hp, xb, yb, cfg, loss_and_grads)

    def run():
        c = stepcheck.check(state.params, state.bn_state, xb, yb, key=check_key(state.key, state.step),
                            spec=cfg.spec, grad_mode=cfg.grad_mode, grads=grads, noise_key=noise_key(state, cfg),
                            loss_and_grads=loss_and_grads, **loss_settings(hp))
        return c._replace(step=state.step)

    if cfg.check_every == 1:
        check = run()
    else:
        with jax.enable_x64(True):
            check = jax.lax.cond(i % cfg.check_every == 0, run, lambda: stepcheck.not_checked(state.step))
    state, (ce, correct) = apply_gradients(state, hp, grads, bn_state, logits, yb, cfg)
    return state, (ce, correct, check)


def check_eval(state: TrainState, hp: Hyper, es, cfg: StepConfig) -> stepcheck.StepCheck:
    """stepcheck.check of the eval-mode pass that `evaluate` runs (BatchNorm with
    its running statistics), on cfg.batch rows of the evaluation set `es`
    (step.evaluate.EvalSet) drawn with the key of the state's step; run at each
    epoch's end when cfg.check_every. Reads only: nothing is trained."""
    key = drawn_key(state.key, "eval_rows", state.step)
    rows = jax.random.randint(key, (cfg.batch,), 0, es.mask.sum())
    x, y = es.X.reshape(-1, es.X.shape[-1])[rows], es.y.reshape(-1)[rows]
    c = stepcheck.check(state.params, state.bn_state, features(x, cfg.prep), y,
                        key=check_key(key, state.step), spec=cfg.spec, grad_mode=cfg.grad_mode,
                        train=False, **loss_settings(hp))
    return c._replace(step=state.step)


def _step(state, hp, X, y, order, i, cfg):
    """Step i of the epoch `order`: its batch, then one (checked) update."""
    xb, yb = get_batch(X, y, order, i, state.key, state.step, cfg)
    if cfg.check_every:
        return checked_step(state, hp, xb, yb, i, cfg)
    return train_step(state, hp, xb, yb, cfg)


def steps(state: TrainState, hp: Hyper, X, y, order, start, cfg: StepConfig, count: int):
    """Steps start .. start+count-1 of an epoch whose batch order is `order`.

    X (N, 3072) uint8 with cfg.prep, else (N, D) float32; y (N,) int32; order
    from epoch_order. Returns the new
    state and per-step (cross-entropy (count,), correct (count,)), then with
    cfg.check_every a stepcheck.StepCheck of arrays (count,) (stepcheck.records
    turns it into rows), then with cfg.keep_grads the gradient of final_grads.
    """
    body = lambda state, i: _step(state, hp, X, y, order, i, cfg)
    state, outs = jax.lax.scan(body, state, start + jnp.arange(count))
    return state, outs + final_grads(state, hp, X, y, order, start + count - 1, cfg)


def final_grads(state: TrainState, hp: Hyper, X, y, order, i, cfg: StepConfig, loss_and_grads=None):
    """With cfg.keep_grads, (the gradient at the new parameters on batch i, the
    segment's last,) for TensorBoard's histograms; else (). Computed only when the
    segment ends the epoch (zeros otherwise): one extra forward and backward pass per
    epoch, inside the same program, so nothing recompiles and nothing is trained."""
    if not cfg.keep_grads:
        return ()

    def grads():
        xb, yb = get_batch(X, y, order, i, state.key, state.step - 1, cfg)
        return gradients(state, hp, xb, yb, cfg, loss_and_grads)[0]

    ends_epoch = (i + 1) * cfg.batch == order.shape[0]
    return (jax.lax.cond(ends_epoch, grads, lambda: jax.tree.map(jnp.zeros_like, state.params)),)


# One compiled scan per (config, count). The state's buffers are donated: the
# caller must use the returned state.
run_steps = jax.jit(steps, static_argnames=("cfg", "count"), donate_argnums=(0,))

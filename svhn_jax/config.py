"""The one run configuration: every setting of a run, its default, type, range, help
text and sweep role, in one frozen dataclass. No JAX here (the command line builds
its flags from these fields before JAX starts).

    RunConfig      the settings; constructing one validates it, so a RunConfig in
                   hand is always a valid one
    PRESETS        named overrides of the defaults
    make(...)      defaults, then a file or a preset, then explicit settings
    from_json / to_json   the "settings" block of a run's config.json

A field's metadata (`setting(...)`) says how the command line and sweeps treat it:

    sweep="vmap"   configurations differing only in these share one compiled program
                   and train at once, stacked by jax.vmap (lr, reg, seed)
    sweep="group"  a sweep axis whose values start a new compiled group
    sweep=None     not sweepable: one value per sweep
    commands       the subcommands that take it as a flag

Adding a setting is adding one field here (README, "Adding a setting").
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, SvhnJaxError

# Names owned by modules that import JAX; tests/test_config.py checks they agree.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")           # nn.optim.OPTIMIZERS
SCHEDULES = ("constant", "step", "cosine", "warmup-constant", "warmup-step",
             "warmup-cosine")                                               # nn.schedules.SCHEDULES
BATCHNORM = ("none", "before", "after")                                     # nn.model.BATCHNORM_PLACEMENTS
BATCHNORM_ALIASES = {"off": "none", "on": "before"}
PREPROCESS = ("scale", "channel", "image", "local")                          # data.preprocess.MODES

SEED_MAX = 2**31 - 1   # jax.random.key takes a 32-bit seed on every backend
INT_MAX = 2**31 - 1    # counts, sizes and periods: int32 in the compiled program

TRAIN, SWEEP, LR_FIND = "train", "sweep", "lr-find"
NO_CHECKPOINTS = ("lr-find keeps no checkpoint: the range test is --steps steps (300 by default), "
                  "seconds of training; an interrupted one is run again")
ALL = (TRAIN, SWEEP, LR_FIND)


def setting(default, help: str, *, choices=None, low=None, high=None, above=None, below=None,
            sweep: str | None = None, commands=ALL, refused=None, metavar=None):
    """A RunConfig field with what the command line and the validation need.

    low/high bound a number inclusively, above/below exclusively (lr > 0); refused:
    {command: why} for subcommands that know the flag and refuse it with that reason."""
    return field(default=default, metadata=dict(
        help=help, choices=choices, low=low, high=high, above=above, below=below, sweep=sweep,
        commands=commands, refused=refused or {}, metavar=metavar))


@dataclass(frozen=True)
class RunConfig:
    # data
    data: str = setting("svhn", "svhn (prepared tensorflow-datasets), a folder with the official "
                        ".mat files, an .npz with X and y, or synthetic")
    data_dir: str | None = setting(None, "tensorflow-datasets folder (default $TFDS_DATA_DIR or "
                                   "~/tensorflow_datasets)")
    extra: bool = setting(False, "also train on SVHN's 531,131 extra images (--data svhn; get them "
                          "with svhn-jax download --extra)")
    synthetic_n: int = setting(73257, "images of --data synthetic", low=10, high=INT_MAX)
    val_fraction: float = setting(0.1, "validation part of the training data", above=0.0, below=1.0)
    test_fraction: float = setting(0.2, "test part, for data without an official test split",
                                   above=0.0, below=1.0)
    split_seed: int = setting(0, "seed of the train/validation/test partition, independent of "
                              "--seed so that every model seed is scored on the same images",
                              low=0, high=SEED_MAX)
    preprocess: str = setting("image", "scale ([-1, 1]), channel (per-channel standardisation), "
                              "image (per-image standardisation) or local (local contrast "
                              "normalisation)", choices=PREPROCESS, sweep="group")
    grayscale: bool = setting(True, "convert to luminance first")
    # model
    hidden: tuple = setting((128,), "hidden sizes, e.g. 128 or 1024,512 (in sweeps, x separates "
                            "layers: 128,512x256)", sweep="group", metavar="SIZES")
    batchnorm: str = setting("none", "BatchNorm: none, before the ReLU, or after it (the seed "
                             "notebook's placement)", choices=BATCHNORM, sweep="group")
    activation: str | None = setting(None, "activation of every hidden layer: an activation of the "
                                     "layer registry, as svhn-jax gradcheck lists them (default: its "
                                     "first, ReLU)", sweep="group", metavar="NAME")
    # optimisation
    optimizer: str = setting("adam", "optimizer", choices=OPTIMIZERS, sweep="group")
    lr: float = setting(1e-3, "(peak) learning rate", above=0.0, high=1e6, sweep="vmap",
                        commands=(TRAIN, SWEEP))
    schedule: str = setting("constant", "learning-rate schedule", choices=SCHEDULES, sweep="group",
                            commands=(TRAIN, SWEEP))
    warmup_epochs: float | None = setting(
        None, "length of the linear warm-up of a warmup-* schedule, in epochs (default 1)",
        above=0.0, high=1e6, sweep="group", commands=(TRAIN, SWEEP))
    decay_factor: float = setting(0.1, "step schedule: multiply the learning rate by this at "
                                  "every decay", above=0.0, high=1e6, sweep="group",
                                  commands=(TRAIN, SWEEP))
    decay_epochs: float | None = setting(
        None, "step schedule: epochs between decays (default a third of the run)", above=0.0,
        high=1e6, sweep="group", commands=(TRAIN, SWEEP))
    reg: float = setting(0.0, "L2 strength: loss += 0.5 * reg * sum(W**2)", low=0.0, high=1e6,
                         sweep="vmap")
    smoothing: float = setting(0.0, "label smoothing: the cross-entropy's targets are (1 - s) "
                               "one-hot + s / 10", low=0.0, below=1.0, sweep="vmap")
    dropout: float = setting(0.0, "dropout rate of every hidden layer's output: inverted dropout, "
                             "none in evaluation (0: no dropout layer)", low=0.0, below=1.0, sweep="vmap")
    input_dropout: float = setting(0.0, "dropout rate of the input features (0: none)", low=0.0,
                                   below=1.0, sweep="vmap")
    batch: int = setting(64, "batch size", low=1, high=INT_MAX, sweep="group")
    epochs: int = setting(10, "epochs", low=1, high=100_000, sweep="group", commands=(TRAIN, SWEEP))
    shift: int = setting(0, "random-shift augmentation in pixels (0: off)", low=0, high=31,
                         sweep="group")
    grad: str = setting("manual", "gradients from the hand-written VJPs (manual) or jax.grad "
                        "(autodiff)", choices=("manual", "autodiff"))
    seed: int = setting(0, "seed of initialisation, data order and augmentation", low=0,
                        high=SEED_MAX, sweep="vmap")
    devices: str = setting("auto", "devices to train on: a number, all, or auto (one device for a "
                           "single model in one process, else all); one model's batch is split "
                           "over them, K models are spread over them first (README, 'Scaling "
                           "out'); results equal one device's up to float32 rounding",
                           commands=ALL, metavar="N|all|auto")
    ensemble: int = setting(1, "train this many seeds (--seed, --seed + 1, ...) at once and score "
                            "their averaged probabilities as one model (1: a single model)",
                            low=1, high=4096, commands=(TRAIN,))
    # run control (train only)
    patience: int = setting(0, "early stopping after this many epochs without a better "
                            "validation accuracy (0: off)", low=0, high=INT_MAX, commands=(TRAIN,))
    gradcheck_every: int = setting(0, "check the gradient of every N-th step inside the compiled "
                                   "epoch (1: every step; 0: off)", low=0, high=INT_MAX)
    gradcheck_strict: bool = setting(False, "stop when a gradient check fails", commands=(TRAIN,))
    checkpoint_every: int = setting(0, "also checkpoint every N steps (always at each epoch's end)",
                                    low=0, high=INT_MAX, commands=(TRAIN, SWEEP),
                                    refused={LR_FIND: NO_CHECKPOINTS})
    tensorboard: bool = setting(True, "write TensorBoard event files into RUN/tb (--no-tensorboard: off)",
                                commands=(TRAIN, SWEEP))
    histogram_every: int | None = setting(None, "TensorBoard histograms of every layer's weights and "
                                          "gradients every N epochs (0: never; default 5)", low=0,
                                          high=INT_MAX, commands=(TRAIN,))
    train_on_val: bool = setting(False, "also train on the validation images (a final fit after "
                                 "choosing on validation; the last epoch is kept)", commands=())
    # distortions of the training images inside the compiled step (data.augment), and
    # test-time averaging
    rotate: float = setting(0.0, "random rotation of each training image by up to this many "
                            "degrees either way (0: off)", low=0, high=45, sweep="group",
                            metavar="DEG")
    scale: float = setting(0.0, "random zoom of each training image by a factor between 1 - S and "
                           "1 + S (0: off)", low=0, below=1.0, sweep="group", metavar="S")
    shear: float = setting(0.0, "random vertical shear of each training image: the column d "
                           "columns from the centre moves by s d pixels, |s| <= S (0: off)",
                           low=0, below=1.0, sweep="group", metavar="S")
    elastic: float = setting(0.0, "random elastic distortion of each training image: a smooth random "
                             "displacement field (noise smoothed over 4 pixels) moving pixels by "
                             "about PX pixels (standard deviation) (0: off)", low=0, high=8,
                             sweep="group", metavar="PX")
    tta: int = setting(1, "score validation and test images by the softmax averaged over N "
                       "copies: the image, then its shifts by one pixel (1: the image alone)",
                       low=1, high=9, commands=(TRAIN, SWEEP), metavar="N")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))
        if self.extra and self.data != "svhn":
            raise SvhnJaxError(f"--extra adds SVHN's extra images to --data svhn, not to "
                               f"{self.data!r}; use --data svhn (after svhn-jax download --extra) "
                               f"or drop --extra")
        if self.val_fraction + self.test_fraction >= 1:
            raise SvhnJaxError("val fraction + test fraction must be below 1, leaving images to "
                               "train on; e.g. --val-fraction 0.1 --test-fraction 0.2")
        warm = self.schedule.startswith("warmup-")
        if self.warmup_epochs is not None and not warm:
            raise SvhnJaxError(f"--warmup-epochs {self.warmup_epochs:g} has no effect with "
                               f"--schedule {self.schedule}; use --schedule warmup-{self.schedule.removeprefix('warmup-')}"
                               f" or drop --warmup-epochs")
        if not (self.devices in ("all", "auto") or (self.devices.isdigit() and int(self.devices) >= 1)):
            raise SvhnJaxError(f"--devices must be a positive integer, all or auto, got "
                               f"{self.devices!r}")
        step = self.schedule.removeprefix("warmup-") == "step"
        for flag, value, default in (("--decay-factor", self.decay_factor, 0.1),
                                     ("--decay-epochs", self.decay_epochs, None)):
            if value != default and not step:
                raise SvhnJaxError(f"{flag} {value:g} has no effect with --schedule "
                                   f"{self.schedule}; use --schedule step (or warmup-step) or drop "
                                   f"{flag}")
        if self.batchnorm != "none" and self.batch < 2:
            raise SvhnJaxError("BatchNorm needs a batch of at least 2; use --batch 2 or more")
        if self.histogram_every is not None and not self.tensorboard:
            raise SvhnJaxError("--histogram-every writes TensorBoard histograms: drop it, or drop "
                               "--no-tensorboard")
        if self.ensemble > 1:
            _check_ensemble(self)
        if self.gradcheck_strict and not self.gradcheck_every:
            raise SvhnJaxError("--gradcheck-strict needs checks to act on: add --gradcheck-every N")

    @property
    def warmup(self) -> float:
        """The warm-up length in epochs that a warmup-* schedule uses."""
        return 1.0 if self.warmup_epochs is None else self.warmup_epochs

    @property
    def histograms(self) -> int:
        """Epochs between TensorBoard histograms (0: none)."""
        return 5 if self.histogram_every is None else self.histogram_every

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
VMAPPED = tuple(n for n, f in FIELDS.items() if f.metadata["sweep"] == "vmap")
SWEEPABLE = tuple(n for n, f in FIELDS.items() if f.metadata["sweep"])

PRESETS = {
    # The seed notebook's network, Dense(128)-ReLU-Dense, with its inputs and
    # hyperparameters chosen on the validation split of the 8k slice (README, "Measured
    # numbers").
    "mission": dict(hidden=(128,), batchnorm="none", optimizer="adam", lr=3e-3, schedule="cosine",
                    reg=3e-3, batch=64, epochs=40, preprocess="local", grayscale=True, shift=2),
    # The best MLP recipe found on validation: wider, BatchNorm, warm-up + cosine, shifts
    # and mild affine distortions.
    "best": dict(hidden=(1024, 512), batchnorm="before", optimizer="adam", lr=1e-3,
                 schedule="warmup-cosine", warmup_epochs=1.0, reg=3e-2, batch=128, epochs=60,
                 preprocess="local", grayscale=True, shift=2, rotate=10.0, scale=0.1, shear=0.15),
}


def _check_ensemble(c: RunConfig) -> None:
    last = c.seed + c.ensemble - 1
    if last > SEED_MAX:
        raise SvhnJaxError(f"--ensemble {c.ensemble} trains seeds {c.seed} to {last}, beyond the "
                           f"largest seed {SEED_MAX}; use a smaller --seed")


def kind(name: str) -> str:
    """A field's value kind, from its annotation: int, float, bool, str or tuple."""
    return FIELDS[name].type.split(" ")[0]


def _type_name(f) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "tuple": "a list of positive integers"}.get(kind(f.name), f.type)


def _check(f, v):
    """v converted to the field's type and checked against its range, or SvhnJaxError."""
    name, m = f.name, f.metadata
    flag = "--" + name.replace("_", "-")
    if v is None:
        if f.default is None:
            return None
        raise SvhnJaxError(f"{flag} needs a value")
    k = kind(name)
    bad_type = SvhnJaxError(f"{flag} must be {_type_name(f)}, got {v!r}")
    if k == "bool":
        if not isinstance(v, bool):
            raise bad_type
        return v
    if k == "str":
        if not isinstance(v, str):
            raise bad_type
        if name == "batchnorm":
            v = BATCHNORM_ALIASES.get(v, v)
        if m["choices"] and v not in m["choices"]:
            raise SvhnJaxError(f"unknown {name.replace('_', ' ')} {v!r}; choose one of "
                               f"{', '.join(m['choices'])}")
        return v
    if k == "tuple":
        if not isinstance(v, (list, tuple)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= INT_MAX for h in v):
            raise SvhnJaxError(f"{flag} must be a list of positive integers, e.g. 128 or 1024,512; "
                               f"got {v!r}")
        return tuple(v)
    if k == "int":
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad_type
    elif k == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad_type
        v = float(v)
        if not math.isfinite(v):
            raise SvhnJaxError(f"{flag} must be a finite number, got {v}")
    lo, hi, above, below = m["low"], m["high"], m["above"], m["below"]
    if (lo is not None and v < lo) or (hi is not None and v > hi) \
            or (above is not None and v <= above) or (below is not None and v >= below):
        low = f"> {above:g}" if above is not None else f">= {lo}" if lo is not None else ""
        high = f"< {below:g}" if below is not None else f"<= {hi}" if hi is not None else ""
        raise SvhnJaxError(f"{flag} must be {' and '.join(s for s in (low, high) if s)}, got {v}")
    return v


def make(preset: str | None = None, base: RunConfig | None = None, **settings) -> RunConfig:
    """Defaults (or `base`), then the preset, then the settings that are not None."""
    if preset is not None and preset not in PRESETS:
        raise SvhnJaxError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise SvhnJaxError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    values = dict(PRESETS.get(preset, {}))
    values.update({k: v for k, v in settings.items() if v is not None})
    if "schedule" in values and "warmup_epochs" not in values and base is not None \
            and not values["schedule"].startswith("warmup-"):
        values["warmup_epochs"] = None   # a new non-warm-up schedule drops the file's warm-up
    return dataclasses.replace(base or RunConfig(), **values)


def to_json(c: RunConfig) -> dict:
    """The settings as plain JSON values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(c).items()}


def from_json(settings: Any, source: str = "config") -> RunConfig:
    """A RunConfig from a dict of settings; unknown or ill-typed keys name themselves."""
    if not isinstance(settings, dict):
        raise SvhnJaxError(f"{source}: expected an object of settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise SvhnJaxError(f"{source}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                           f"known: {', '.join(FIELDS)}")
    try:
        return RunConfig(**settings)
    except SvhnJaxError as e:
        raise SvhnJaxError(f"{source}: {e}") from None


def read_file(path) -> RunConfig:
    """Settings from a JSON file: a run's config.json (its "settings" block) or a
    plain object of settings."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(), parse_constant=_reject_constant)
    except OSError as e:
        raise SvhnJaxError(f"cannot read --config {path} ({e.strerror}); pass a run's "
                           f"config.json or a JSON file of settings") from None
    except ValueError as e:
        raise DataError(f"--config {path} is not valid JSON ({e})") from None
    if isinstance(obj, dict) and "settings" in obj:
        obj = obj["settings"]
    return from_json(obj, str(path))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")

"""`svhn-jax evaluate`: score a run's best-validation parameters on data, with the
run's own preprocessing, and say which images were scored and how many of them the
run trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data
from ..data import preprocess
from ..errors import SvhnJaxError
from ..step import evaluate as evaluation
from ..step import settings
from . import folder, launch
from . import parts as run_parts

SPLITS = ("train", "val", "test", "all")


def _same_data(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists()
                      and Path(a).resolve() == Path(b).resolve())


def choose_images(c, loaded: dict, *, own: bool, split: str | None) -> tuple[str, tuple]:
    """(split name, (X, y)) to score.

    On the run's own data the default is its held-out test part (an .npz is split
    as the run split it; SVHN has its official test split). Other data default to
    their official test split, or all of them when they have none. "all" scores
    every image on purpose, trained-on ones included.
    """
    if split is None:
        split = "test" if own or "test" in loaded else "all"
    if split not in SPLITS:
        raise SvhnJaxError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        arrays = list(loaded.values())
        return split, (np.concatenate([X for X, _ in arrays]), np.concatenate([y for _, y in arrays]))
    return split, run_parts.split(c, loaded, consume=True)[split]   # loaded is ours alone


def evaluate_run(run, spec: str | None = None, *, split: str | None = None, data_dir=None) -> dict:
    """Accuracy, loss, per-class accuracy and confusion of the run's best parameters,
    plus `split`, `n` and `overlap_with_training` (scored images the run trained on)."""
    run = Path(run)
    c, derived = folder.read_run(run)
    own = spec is None or _same_data(str(spec), c.data)
    loaded = run_parts.load(c, spec=spec, data_dir=data_dir)
    split, (X, y) = choose_images(c, loaded, own=own, split=split)
    prep = derived["preprocessing"]
    cfg = settings.step_config(c, 1, prep)   # the network and the per-batch preprocessing
    es = evaluation.make_eval_set(X, y)
    best = launch.load_best(run, c, cfg.spec, preprocess.input_dim(prep))
    extra = {}
    if c.ensemble > 1:   # the members' averaged probabilities, scored as one model
        loss, acc, pred, members = evaluation.evaluate_ensemble(best["params"], best["bn_state"], es,
                                                                cfg.spec, prep=cfg.prep)
        extra = {"ensemble": c.ensemble, "member_accuracy": members}
    else:
        loss, acc, pred = evaluation.evaluate(best["params"], best["bn_state"], es, cfg.spec, cfg.prep)
    conf = evaluation.confusion_matrix(y, pred)
    trained = run / "train_fingerprints.npy"
    overlap = (data.count_overlap(data.image_fingerprints(X), np.load(trained, allow_pickle=False))
               if trained.exists() else None)
    return {"accuracy": acc, "loss": loss, "n": int(len(y)), "split": split,
            "data": str(spec or c.data), "overlap_with_training": overlap,
            "per_class_accuracy": (np.diag(conf) / np.maximum(conf.sum(axis=1), 1)).tolist(),
            "confusion": conf.tolist(), **extra}

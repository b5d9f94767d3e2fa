"""`svhn-jax evaluate`: score a run's best-validation parameters on data, with the
run's own preprocessing, and say which images were scored and how many of them the
run trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data
from ..data import preprocess
from ..errors import DataError, SvhnJaxError
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


def _require_svhn_if_named(spec: str, data_dir, own: bool) -> None:
    """--data svhn that is not prepared: the fixes that make sense for scoring (getting
    SVHN, or other data to score), not training's (--download, synthetic data)."""
    d = data.default_data_dir(data_dir)
    if spec == "svhn" and not data.prepared_splits(d):
        other = "" if own else "drop --data to score the run's own data, or "
        raise DataError(f"SVHN is not prepared in {d}, so there is nothing to score. Fix: "
                        f"svhn-jax download --dir D && svhn-jax prepare --mat-dir D --data-dir {d}; "
                        f"or {other}score a folder holding the official train_32x32.mat and "
                        f"test_32x32.mat (--data DIR) or an .npz with X and y (--data FILE.npz)")


def evaluate_run(run, spec: str | None = None, *, split: str | None = None, data_dir=None,
                 tta: int | None = None) -> dict:
    """Accuracy, loss, per-class accuracy and confusion of the run's best parameters,
    plus `split`, `n`, `tta` and `overlap_with_training` (scored images the run trained
    on). tta: copies of each image averaged over (step.evaluate), default the run's."""
    run = Path(run)
    c, derived = folder.read_run(run)
    tta = evaluation.check_tta(c.tta if tta is None else tta)
    own = spec is None or _same_data(str(spec), c.data)
    _require_svhn_if_named(spec or c.data, data_dir or c.data_dir, own)
    loaded = run_parts.load(c, spec=spec, data_dir=data_dir)
    split, (X, y) = choose_images(c, loaded, own=own, split=split)
    prep = derived["preprocessing"]
    cfg = settings.step_config(c, 1, prep)   # the network and the per-batch preprocessing
    es = evaluation.make_eval_set(X, y)
    best = launch.load_best(run, c, cfg.spec, preprocess.input_dim(prep))
    extra = {}
    if c.ensemble > 1:   # the members' averaged probabilities, scored as one model
        loss, acc, pred, members = evaluation.evaluate_ensemble(best["params"], best["bn_state"], es,
                                                                cfg.spec, prep=cfg.prep, tta=tta)
        extra = {"ensemble": c.ensemble, "member_accuracy": members}
    else:
        loss, acc, pred = evaluation.evaluate(best["params"], best["bn_state"], es, cfg.spec, cfg.prep, tta)
    conf = evaluation.confusion_matrix(y, pred)
    trained = run / "train_fingerprints.npy"
    overlap = (data.count_overlap(data.image_fingerprints(X), np.load(trained, allow_pickle=False))
               if trained.exists() else None)
    return {"accuracy": acc, "loss": loss, "n": int(len(y)), "split": split, "tta": tta,
            "data": str(spec or c.data), "overlap_with_training": overlap,
            "per_class_accuracy": (np.diag(conf) / np.maximum(conf.sum(axis=1), 1)).tolist(),
            "confusion": conf.tolist(), **extra}

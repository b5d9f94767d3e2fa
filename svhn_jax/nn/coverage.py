"""What `svhn-jax gradcheck` checks: every variant of every layer, alone and inside a model.

A variant is a path through a layer's code that another does not take: a Dense
layer with a bias and one without (the Dense before a BatchNorm, whose bias the
mean subtraction cancels), BatchNorm in train mode (batch statistics, their
gradient terms) and in eval mode (the running statistics `evaluate` uses), ReLU.
They are read off the models themselves (`layer_variant`), so a model that
gains a layer or a placement brings its variants along: the models are the
networks `model.make_spec` builds with the given hidden sizes, for each
BatchNorm placement and each mode; every layer variant they contain is then
checked alone too, and the loss terms. Narrowing the placements or the modes
narrows both. (A layer registry would give each layer its `layer_variant`.)
"""

from __future__ import annotations

import jax

from . import gradcheck, model

MODES = ("train", "eval")


def model_variants(placements=model.BATCHNORM_PLACEMENTS, modes=MODES) -> list[tuple[str, bool]]:
    """(BatchNorm placement, train) of every model checked, placements outermost."""
    for name in tuple(placements) + tuple(modes):
        if name not in model.BATCHNORM_PLACEMENTS + MODES:
            raise gradcheck.GradCheckError(f"unknown placement or mode {name!r}; choose from "
                                           f"{', '.join(model.BATCHNORM_PLACEMENTS + MODES)}")
    return [(bn, mode == "train") for bn in placements for mode in modes]


def layer_variant(name: str, params: dict, train: bool) -> dict:
    """The options of gradcheck.check_layer that select the variant of layer
    `name` with these (shapes of) parameters, in this mode."""
    return {"dense": {"bias": "b" in params}, "batchnorm": {"train": train}}.get(name, {})


def layer_variants(specs_and_modes) -> list[tuple[str, dict]]:
    """Every distinct (layer name, options) in the models [(spec, train)], in the
    order they first occur."""
    seen = []
    for spec, train in specs_and_modes:
        params, _ = jax.eval_shape(lambda spec=spec: model.init(jax.random.key(0), spec, 4))
        for (name, _), p in zip(spec, params):
            if (name, layer_variant(name, p, train)) not in seen:
                seen.append((name, layer_variant(name, p, train)))
    return seen


def check_all(hidden=(16,), *, placements=model.BATCHNORM_PLACEMENTS, modes=MODES, batch=8, in_dim=12,
              reg=0.1, seed=0, fd_samples=None) -> list[dict]:
    """gradcheck reports: every layer variant of the models (alone, on small
    inputs), the loss terms, then each model (hidden sizes `hidden`, input
    width `in_dim`) for each placement and mode."""
    models = [(model.make_spec(hidden, batchnorm=bn), train) for bn, train in model_variants(placements, modes)]
    return ([gradcheck.check_layer(name, batch=batch, seed=seed, **options)
             for name, options in layer_variants(models)]
            + [gradcheck.check_loss(batch=batch, seed=seed)]
            + [gradcheck.check_model(spec, in_dim=in_dim, batch=batch, reg=reg, seed=seed, train=train,
                                     fd_samples=fd_samples) for spec, train in models])

"""What `svhn-jax gradcheck` checks: every variant of every layer, alone and inside a model.

A variant is a path through a layer's code that another does not take: a Dense
layer with a bias and one without (the Dense before a BatchNorm, whose bias the
mean subtraction cancels), BatchNorm in train mode (batch statistics, their
gradient terms) and in eval mode (the running statistics `evaluate` uses), ReLU.
They are read off the models themselves (`layer_variant`), so a model that
gains a layer or a placement brings its variants along: the models are the
networks `model.make_spec` builds with the given hidden sizes, for each
BatchNorm placement and each mode; every layer variant they contain is then
checked alone too, and the loss terms. Narrowing the placements, the modes or
the activations narrows both; a model with each activation, but only the first
activation with every placement. Each layer's variants are its registry record's
(layers.Layer.variants), so a new layer brings its own.
"""

from __future__ import annotations

import jax

from . import gradcheck, layers, model

MODES = ("train", "eval")


def model_variants(placements=model.BATCHNORM_PLACEMENTS, modes=MODES, activations=None,
                   rates=None) -> list[tuple[dict, bool]]:
    """(model.make_spec keywords, train) of every model checked: the first of
    `activations` (default: every activation of the registry, ReLU first) with
    every placement, each other one with the first placement only (BatchNorm's
    code does not depend on the activation next to it), each in every mode.
    rates: the names of the layers with a rate the models have."""
    activations = layers.activations() if activations is None else tuple(activations)
    placements, modes = tuple(placements), tuple(modes)
    for name in placements + modes + activations:
        if name not in model.BATCHNORM_PLACEMENTS + MODES + layers.activations():
            raise gradcheck.GradCheckError(f"unknown placement, mode or activation {name!r}; choose from "
                                           f"{', '.join(model.BATCHNORM_PLACEMENTS + MODES + layers.activations())}")
    return [(dict(batchnorm=bn, activation=a, rates=tuple(rates or ())), mode == "train")
            for i, a in enumerate(activations) for bn in (placements if i == 0 else placements[:1])
            for mode in modes]


def layer_variant(name: str, params: dict, train: bool) -> dict:
    """The options of gradcheck.check_layer that select the variant of layer
    `name` with these (shapes of) parameters, in this mode: the first of its
    record's variants whose options hold."""
    facts = {"bias": "b" in params, "train": train}
    return next(opts for _, opts in layers.LAYERS[name].variants
                if all(facts[k] == v for k, v in opts.items()))


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


def specs(hidden, placements=model.BATCHNORM_PLACEMENTS, modes=MODES, activations=None, rates=None):
    """[(spec, train)] of the models `model_variants` lists, with hidden sizes `hidden`."""
    return [(model.make_spec(hidden, **kw), train) for kw, train in model_variants(placements, modes, activations,
                                                                                  rates)]


def check_all(hidden=(16,), *, placements=model.BATCHNORM_PLACEMENTS, modes=MODES, activations=None,
              rates=None, batch=8, in_dim=12, reg=0.1, seed=0, fd_samples=None) -> list[dict]:
    """gradcheck reports: every layer variant of the models (alone, on small
    inputs), the loss terms, then each model (hidden sizes `hidden`, input
    width `in_dim`) for each activation, placement and mode. rates: {layer
    name: rate} of the layers with a rate (dropout) the models have."""
    rates = dict(rates or {})
    models = specs(hidden, placements, modes, activations, rates)
    return ([gradcheck.check_layer(name, batch=batch, seed=seed, rate=rates.get(name), **options)
             for name, options in layer_variants(models)]
            + [gradcheck.check_loss(batch=batch, seed=seed)]
            + [gradcheck.check_model(spec, in_dim=in_dim, batch=batch, reg=reg, seed=seed, train=train,
                                     fd_samples=fd_samples, rates=rates) for spec, train in models])

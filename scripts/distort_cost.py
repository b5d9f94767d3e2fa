"""What the distortions and test-time averaging cost: seconds per epoch of the compiled
training step with each distortion against the plain step, measured side by side.

    python scripts/distort_cost.py [--preset mission] [--n 5600] [--repeats 5] [--json]

The step is the one `svhn-jax train` compiles (uint8 images normalised, shifted and
distorted in the step), with the preset's settings, on n synthetic images (5,600: the
8k slice's training part; the content does not change the time). Modes: plain (the
preset's shifts only, its distortions off), --rotate 10, --scale 0.1, --shear 0.2, all three,
--elastic 1, and plain with --preprocess image instead of the presets' local contrast
normalisation; each is compiled first, then the modes take turns, one epoch each, `repeats` times. Reported:
each mode's median seconds per epoch and its ratio to plain; then the evaluation of
n / 7 images (the validation part) with --tta 1, 3 and 9, likewise; and the load of
other processes meanwhile (bench.machine): on a busy machine read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from svhn_jax import config
from svhn_jax.bench import machine
from svhn_jax.data import preprocess
from svhn_jax.step import evaluate as evaluation
from svhn_jax.step import settings, train

OFF = dict(rotate=0.0, scale=0.0, shear=0.0, elastic=0.0)   # the preset's own distortions too
MODES = {"plain": {}, "rotate 10": dict(rotate=10.0), "scale 0.1": dict(scale=0.1),
         "shear 0.2": dict(shear=0.2), "all three": dict(rotate=10.0, scale=0.1, shear=0.2),
         "elastic 1": dict(elastic=1.0), "preprocess image": dict(preprocess="image")}
TTA = (1, 3, 9)


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, the functions taking turns."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(preset: str, n: int, repeats: int) -> dict:
    c = config.make(preset)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    fit = lambda c: preprocess.fit(X, mode=c.preprocess, grayscale=c.grayscale)
    prep = fit(c)
    Xd, hp, steps = train.put_images(X), settings.hyper(c), train.steps_per_epoch(n, c.batch)
    states, epochs = {}, {}
    for name, kw in MODES.items():
        mode = c.replace(**{**OFF, **kw})
        cfg = settings.step_config(mode, steps, fit(mode))
        states[name] = train.init_state(c.seed, cfg, preprocess.input_dim(prep), hp)
        order = train.epoch_order(states[name].key, 0, n, c.batch)

        def epoch(name=name, cfg=cfg, order=order):
            states[name] = train.run_steps(states[name], hp, Xd, y, order, 0, cfg, steps)[0]
            jax.block_until_ready(states[name])

        epoch()   # compile
        epochs[name] = epoch
    token = machine.load_start()
    train_s = _interleaved(epochs, repeats)
    es = evaluation.make_eval_set(X[: n // 7], np.asarray(y)[: n // 7])
    cfg = settings.step_config(c, steps, prep)
    state = states["plain"]
    evals = {t: (lambda t=t: evaluation.evaluate(state.params, state.bn_state, es, cfg.spec, cfg.prep, t))
             for t in TTA}
    for fn in evals.values():
        fn()   # compile
    eval_s = _interleaved(evals, repeats)
    return {"preset": preset, "n": n, "batch": c.batch, "steps_per_epoch": steps, "repeats": repeats,
            "epoch_seconds": train_s, "ratio": {k: v / train_s["plain"] for k, v in train_s.items()},
            "eval_images": n // 7,
            "eval_seconds": {f"tta {t}": s for t, s in eval_s.items()},
            "other_load": machine.load_stop(token), "device": jax.devices()[0].device_kind}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mission", choices=tuple(config.PRESETS))
    p.add_argument("--n", type=int, default=5600, help="training images (default: the 8k slice's)")
    p.add_argument("--repeats", type=int, default=5, help="epochs per mode, the modes taking turns")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = p.parse_args(argv)
    if a.n < 7 or a.repeats < 1:
        p.error("--n must be at least 7 and --repeats at least 1")
    r = measure(a.preset, a.n, a.repeats)
    if a.json:
        print(json.dumps(r))
        return
    print(f"--preset {a.preset}: {a.n} images, batch {r['batch']}, {r['steps_per_epoch']} steps an "
          f"epoch, median of {a.repeats} epochs each, modes interleaved ({r['device']})")
    for k, s in r["epoch_seconds"].items():
        print(f"  {k:10s} {s:7.3f} s/epoch  x{r['ratio'][k]:.2f}")
    print(f"evaluation of {r['eval_images']} images:")
    for k, s in r["eval_seconds"].items():
        print(f"  {k:10s} {s:7.4f} s  x{s / r['eval_seconds']['tta 1']:.2f}")
    print(f"load of other processes: {r['other_load']}")


if __name__ == "__main__":
    main()

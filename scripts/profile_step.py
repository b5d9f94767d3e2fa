"""Where one training step of the mission network spends its time, from a jax.profiler trace.

Trains the mission network (1024 grayscale inputs, Dense 128, ReLU, Dense 10, Adam,
shifts of 2 pixels, batch 64) on N synthetic uint8 images, normalised per batch in
the step as in training, one step at a time
(`train.run_steps` with count 1), profiles --steps steps after a warm-up, and sums
each XLA operation's self time by the jax primitive it came from (dot_general is
the matrix products; gather is the batch gather with the shift; transpose is x^T
materialised for dW; add/sub/mul fusions are mostly the Adam update). The trace
stays in --out for TensorBoard's Profile tab (`pip install xprof`) or ui.perfetto.dev.

    python scripts/profile_step.py [--out /tmp/profile] [--steps 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter

import jax.numpy as jnp

from svhn_jax import config, data
from svhn_jax.run import profiling
from svhn_jax.step import settings as stepconfig, train
from svhn_jax.data import preprocess


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/svhn_jax_profile")
    ap.add_argument("--n", type=int, default=5600)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    c = config.make("mission", data="synthetic", synthetic_n=a.n)
    spe = train.steps_per_epoch(a.n, c.batch)
    images, labels = data.synthetic(a.n, 0)
    fitted = preprocess.fit(images, mode=c.preprocess, grayscale=c.grayscale)
    cfg = stepconfig.step_config(c, spe, fitted)   # uint8 images normalised in the step, as in training
    hp = stepconfig.hyper(c)
    X, y = train.put_images(images), jnp.asarray(labels)
    state = train.init_state(c.seed, cfg, preprocess.input_dim(fitted), hp)
    order = train.epoch_order(state.key, 0, a.n, c.batch)
    step = lambda s, i: train.run_steps(s, hp, X, y, order, i % spe, cfg, 1)[0]
    state, session = profiling.profile_steps(step, state, a.out, steps=a.steps, warmup=2)

    hlo = train.run_steps.lower(state, hp, X, y, order, 0, cfg, 1).compile().as_text()
    prims = profiling.primitives(hlo)
    times = profiling.op_times(session)
    by_prim = Counter()
    for op, us in times["ops"].items():
        by_prim[prims.get(op, "other")] += us / a.steps
    ops_us = sum(by_prim.values())
    result = {"trace": str(session), "step_us_median": statistics.median(times["steps"].values()),
              "ops_us_per_step": ops_us, "by_primitive_us": dict(by_prim.most_common()),
              "matmul_fraction": by_prim["dot_general"] / ops_us}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"trace in {session}")
    print(f"one step: median {result['step_us_median']:.0f} us wall (annotation), "
          f"{ops_us:.0f} us in XLA ops")
    for prim, us in by_prim.most_common(8):
        print(f"  {prim:14s} {us:7.1f} us  {us / ops_us:6.1%}")


if __name__ == "__main__":
    main()

"""Where the training step spends its time, from a jax.profiler trace, and how fast
its matrix products run against the machine's peak.

Trains the mission network (1024 grayscale inputs, Dense H, ReLU, Dense 10, Adam,
shifts of 2 pixels; `--hidden`, `--batch` as `svhn-jax train` takes them) on N
synthetic uint8 images, normalised per batch in the step as in training. After a
compiling segment, one segment of --steps steps runs as one compiled scan (what
training runs) inside the trace. Each XLA operation's self time is summed by the jax
primitive it came from (dot_general is the matrix products; gather the batch gather
with the shift; transpose x^T materialised for dW; add/sub/mul fusions are mostly the
Adam update and the normalisation). The products' FLOPs (`bench.refs.flops_per_epoch`)
over their time give their rate, against the float32 matmul peak measured in the same
run: that fraction is as close as the step can come to the bench's compute floor even
if everything but the products took no time. The trace stays in --out for
TensorBoard's Profile tab (`pip install xprof`) or ui.perfetto.dev.

    python scripts/profile_step.py [--batch 64] [--hidden 128] [--steps 50] [--n 5600] [--out runs/profile_step] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter

import jax.numpy as jnp

from svhn_jax import config, data
from svhn_jax.bench import machine, refs
from svhn_jax.run import profiling
from svhn_jax.step import settings as stepconfig, train
from svhn_jax.data import preprocess


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/profile_step")
    ap.add_argument("--n", type=int, default=5600, help="synthetic images")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="steps in the traced segment")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    c = config.make("mission", data="synthetic", synthetic_n=a.n, batch=a.batch, hidden=(a.hidden,))
    spe = train.steps_per_epoch(a.n, c.batch)
    steps = min(a.steps, spe)
    images, labels = data.synthetic(a.n, 0)
    fitted = preprocess.fit(images, mode=c.preprocess, grayscale=c.grayscale)
    cfg = stepconfig.step_config(c, spe, fitted)   # uint8 images normalised in the step, as in training
    hp = stepconfig.hyper(c)
    X, y = train.put_images(images), jnp.asarray(labels)
    in_dim = preprocess.input_dim(fitted)
    state = train.init_state(c.seed, cfg, in_dim, hp)
    order = train.epoch_order(state.key, 0, a.n, c.batch)
    segment = lambda s, i: train.run_steps(s, hp, X, y, order, 0, cfg, steps)[0]
    state, session = profiling.profile_steps(segment, state, a.out, steps=1, warmup=1)
    peak = machine.peak_gflops()

    hlo = train.run_steps.lower(state, hp, X, y, order, 0, cfg, steps).compile().as_text()
    prims = profiling.primitives(hlo)
    times = profiling.op_times(session)
    by_prim = Counter()
    for op, us in times["ops"].items():
        by_prim[prims.get(op, "other")] += us / steps
    ops_us = sum(by_prim.values())
    step_us = statistics.median(times["steps"].values()) / steps
    shapes = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.-]+) = (\w+\[[\d,]*\])", hlo, re.M))
    products = sorted(((us / steps, op, shapes.get(op, "?")) for op, us in times["ops"].items()
                       if prims.get(op) == "dot_general"), reverse=True)
    flops = refs.flops_per_epoch(c.batch, in_dim, a.hidden)   # the products of one step
    products_gflops = flops / by_prim["dot_general"] / 1e3
    result = {"trace": str(session), "batch": c.batch, "hidden": a.hidden, "steps": steps,
              "step_us": step_us, "ops_us_per_step": ops_us, "by_primitive_us": dict(by_prim.most_common()),
              "matmul_fraction": by_prim["dot_general"] / ops_us, "peak_gflops": peak,
              "products_gflops": products_gflops, "products_frac_peak": products_gflops / peak,
              "step_frac_compute_floor": flops / peak / 1e3 / step_us,
              "products_us": [{"op": op, "shape": shape, "us": us} for us, op, shape in products]}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"trace in {session}")
    print(f"batch {c.batch}, hidden {a.hidden}: one step {step_us:.0f} us wall (median over a scan of "
          f"{steps} steps), {ops_us:.0f} us in XLA ops")
    for prim, us in by_prim.most_common(8):
        print(f"  {prim:14s} {us:7.1f} us  {us / ops_us:6.1%}")
    print("  the largest products (result shape): " + ", ".join(
        f"{shape} {us:.0f} us" for us, _, shape in products[:3]))
    print(f"the products: {flops / 1e6:.1f} MFLOP a step at {products_gflops:.0f} GFLOP/s, "
          f"{products_gflops / peak:.0%} of the measured peak ({peak:.0f} GFLOP/s): the step reaches "
          f"{result['step_frac_compute_floor']:.0%} of its compute floor, and could reach "
          f"{products_gflops / peak:.0%} if nothing but the products took time")


if __name__ == "__main__":
    main()

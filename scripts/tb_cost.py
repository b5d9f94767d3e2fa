"""Cost of TensorBoard events against a mission epoch, measured side by side in one process.

The mission network (1024 grayscale inputs, Dense 128, ReLU, Dense 10, Adam, cosine
schedule, shifts of 2 pixels, batch 64) trains on N synthetic images (default 5,600,
the training part of the 8k slice) with `train.run_steps`, the compiled epoch of
`svhn-jax train`. Between epochs the script writes what a run writes at an epoch end:

    scalars   one history row (tblog.log_epoch)                      every epoch
    layers    weight and gradient histograms, gradient norms         every --hist-every
              (tblog.log_layers)                                     epochs
    closing   the writer's thread writes out what is still queued

and once: the first use in a process (imports, first calls), and at the end the two
figures (PNG files passed through) and the settings.
The epochs' events are kept and written after the last epoch, all at once, then
the writer is closed: that times their whole cost, the writer thread's share
included (in a run that share overlaps with training), per epoch, against the
median epoch. Apart, what producing the gradients for the histograms costs:

    grads     a jitted loss_and_grads on one batch (one extra compilation per run)
    carried   the alternative: the epoch's scan carries its last step's gradients
              out (no extra compilation); its epoch time against the plain one

Plain and carrying epochs alternate; medians are reported with the CPU load of
other processes. The ratio is the number to compare (absolute times drift here).

    python scripts/tb_cost.py [--n 5600] [--epochs 40] [--hist-every 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from svhn_jax import bench_refs, config, plots, runs, tblog, train
from svhn_jax.nn import losses, model


def steps_carrying_grads(state, hp, X, y, order, start, cfg, count):
    """train.steps, with the last step's gradients carried out of the scan."""
    def body(carry, i):
        state, _ = carry
        xb, yb = train.get_batch(X, y, order, i, state.key, state.step, cfg)
        _, grads, bn_state, logits = model.GRAD_MODES[cfg.grad_mode](
            state.params, state.bn_state, xb, yb, cfg.spec, hp.reg, train=True)
        params, opt_state = train.make_optimizer(cfg, hp.lr).update(grads, state.opt_state, state.params)
        ce, _ = losses.softmax_cross_entropy(logits, yb)
        new = train.TrainState(params, bn_state, opt_state, state.step + 1, state.key)
        return (new, grads), (ce, jnp.sum(jnp.argmax(logits, axis=1) == yb))

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    return jax.lax.scan(body, (state, zeros), start + jnp.arange(count))


run_carrying = jax.jit(steps_carrying_grads, static_argnames=("cfg", "count"), donate_argnums=(0,))


def timed(f):
    t = time.perf_counter()
    out = jax.block_until_ready(f())
    return time.perf_counter() - t, out


def measure(n: int, epochs: int, hist_every: int) -> dict:
    c = config.make("mission", data="synthetic", synthetic_n=n)
    spe = train.steps_per_epoch(n, c.batch)
    cfg = runs.step_config(c, spe)
    hp = runs.hyper(c)
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((n, 1024)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    plain = train.init_state(c.seed, cfg, 1024, hp)
    carrying = train.init_state(c.seed, cfg, 1024, hp)
    grad_fn = jax.jit(model.GRAD_MODES[cfg.grad_mode], static_argnames=("spec", "train"))
    grads_of = lambda st: grad_fn(st.params, st.bn_state, X[:c.batch], y[:c.batch], cfg.spec,
                                  hp.reg, train=True)[1]
    order = lambda st, e: train.epoch_order(st.key, e, n, c.batch)

    # compile everything once, untimed except the extra gradient function
    plain, _ = jax.block_until_ready(train.run_steps(plain, hp, X, y, order(plain, 0), 0, cfg, spe))
    (carrying, _), _ = jax.block_until_ready(run_carrying(carrying, hp, X, y, order(carrying, 0), 0, cfg, spe))
    compile_s, _ = timed(lambda: grads_of(plain))

    tmp = Path(tempfile.mkdtemp(prefix="tb_cost_"))
    t = {k: [] for k in ("epoch", "epoch_carrying", "grads")}
    rows, layers = [], []
    token = bench_refs.load_start()
    for e in range(1, epochs + 1):
        dt, (plain, (ce, _)) = timed(lambda: train.run_steps(plain, hp, X, y, order(plain, e), 0, cfg, spe))
        t["epoch"].append(dt)
        dt, ((carrying, last_grads), _) = timed(
            lambda: run_carrying(carrying, hp, X, y, order(carrying, e), 0, cfg, spe))
        t["epoch_carrying"].append(dt)
        rows.append({"epoch": e, "step": int(plain.step), "train_loss": float(np.mean(ce)),
                     "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 1e-3,
                     "seconds": dt, "images_per_s": n / dt})
        if e % hist_every == 0:
            dt, grads = timed(lambda: grads_of(plain))
            t["grads"].append(dt)
            layers.append((int(plain.step), jax.device_get(plain.params), jax.device_get(grads)))
    # Every epoch's events, written as a run writes them, then the writer closed, which
    # waits for its thread to write out the queue: the whole cost, none of it overlapped.
    def first_use():   # imports and first calls, once per process
        w = tblog.open_writer(tmp / "first")
        tblog.log_epoch(w, rows[0])
        tblog.log_layers(w, *layers[0][:1], cfg.spec, *layers[0][1:])
        tblog.close(w)
    first_s, _ = timed(first_use)
    writer = tblog.open_writer(tmp / "tb")
    scalars_s, _ = timed(lambda: [tblog.log_epoch(writer, row) for row in rows])
    layers_s, _ = timed(lambda: [tblog.log_layers(writer, s, cfg.spec, p, g) for s, p, g in layers])
    drain_s, _ = timed(lambda: tblog.close(writer))
    load = bench_refs.load_stop(token)

    conf = np.random.default_rng(1).integers(0, 50, (10, 10))
    plots.confusion(conf, tmp / "confusion.png")
    imgs = np.random.default_rng(2).integers(0, 256, (36, 32, 32, 3), dtype=np.uint8)
    plots.misclassified(imgs, np.zeros(36, int), np.ones(36, int), tmp / "misclassified.png")
    writer = tblog.open_writer(tmp / "tb", start_step=int(plain.step) + 1)

    def final():
        tblog.log_image(writer, "images/confusion", tmp / "confusion.png", int(plain.step))
        tblog.log_image(writer, "images/misclassified", tmp / "misclassified.png", int(plain.step))
        tblog.log_settings(writer, c)
        tblog.close(writer)
    final_s, _ = timed(final)

    med = {k: float(np.median(v)) for k, v in t.items()}
    per_epoch = (scalars_s + layers_s + drain_s) / epochs
    once = first_s + final_s
    return {"n": n, "steps_per_epoch": spe, "epochs": epochs, "hist_every": hist_every,
            "epoch_s": med["epoch"], "scalars_ms": 1e3 * scalars_s / epochs,
            "layers_ms": 1e3 * layers_s / len(layers), "drain_ms": 1e3 * drain_s,
            "events_per_epoch_ms": 1e3 * per_epoch, "events_fraction": per_epoch / med["epoch"],
            "grads_call_ms": 1e3 * med["grads"], "grads_compile_s": compile_s,
            "grads_fraction": (med["grads"] / hist_every) / med["epoch"],
            "epoch_carrying_s": med["epoch_carrying"],
            "carrying_ratio": med["epoch_carrying"] / med["epoch"],
            "final_images_settings_ms": 1e3 * final_s, "first_use_ms": 1e3 * first_s,
            "run_fraction": (per_epoch * epochs + once) / (med["epoch"] * epochs),
            "other_busy_cores": load["other_busy_cores"], "cores": load["cores"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5600, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--hist-every", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.n, a.epochs, a.hist_every)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"mission epoch ({r['n']} images, {r['steps_per_epoch']} steps): median {r['epoch_s'] * 1e3:.1f} ms "
          f"over {r['epochs']} epochs; other processes kept {r['other_busy_cores']:.2f} of {r['cores']} cores busy")
    print(f"events: scalars {r['scalars_ms']:.2f} ms/epoch, histograms {r['layers_ms']:.2f} ms "
          f"every {r['hist_every']} epochs, closing {r['drain_ms']:.1f} ms once -> "
          f"{r['events_per_epoch_ms']:.2f} ms/epoch = {r['events_fraction']:.2%} of an epoch")
    print(f"gradients for the histograms, jitted on one batch: {r['grads_call_ms']:.2f} ms a call "
          f"({r['grads_fraction']:.2%} of an epoch) + {r['grads_compile_s']:.2f} s compilation once")
    print(f"  or carried out of the epoch's scan: epoch {r['epoch_carrying_s'] * 1e3:.1f} ms, "
          f"{r['carrying_ratio']:.3f}x the plain epoch")
    print(f"once: first use {r['first_use_ms']:.1f} ms, 2 images + settings at the end "
          f"{r['final_images_settings_ms']:.1f} ms; all events of a {r['epochs']}-epoch run: "
          f"{r['run_fraction']:.2%} of its training time")


if __name__ == "__main__":
    main()

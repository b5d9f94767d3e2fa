"""Hand-derived vs jax.grad gradients at every step of a real training run.

    python scripts/compare_grads.py --data ../shared/data/svhn_test_8k.npz --out /tmp/compare_grads

Trains the MLP one step at a time with the package's own jitted step
(`train.run_steps(..., count=1)`, float32) and, before each step, on exactly the
batch that step trains on (`train.get_batch`), compares

  float32 (the training precision): the gradients of
      model.loss_and_grads_manual (hand VJPs) and model.loss_and_grads_autodiff
      (jax.grad): max |hand - jax.grad| over all entries, and the relative
      difference max_i |a_i - b_i| / max(1e-8, max_i(|a_i| + |b_i|)) per
      parameter leaf, maximised over the leaves. These differences are float32
      rounding (the two compute the same derivative in a different order), so
      they should stay near float32's resolution and not drift upward as
      training proceeds;
  float64: stepcheck.step_check on the same parameters and batch, cast up, with
      the checks and tolerances of `svhn-jax train --gradcheck-every`
      (svhn_jax.nn.stepcheck.TOL_STEP_AUTODIFF and TOL_STEP_DIRECTIONAL explain them):
      hand vs jax.grad, and a directional central finite difference along a
      random unit vector, counted where the loss is smooth along it, with
      step_check's step or --fd-eps. A much smaller step lets rounding
      (~1e-16 L / eps) dominate the finite difference.

The training settings are `svhn-jax train`'s flags (built from svhn_jax.config,
--preset included) and mean the same: the steps compared are the first --steps
steps of `svhn-jax train` with those settings (same initialisation, batches,
augmentation and schedule; the schedule is stretched only when --steps runs past
its epochs).

Outputs in DIR:

    grad_diffs.csv   one row per step: step, epoch, loss, float32 max abs / max rel
                     difference (and the leaf where the latter is largest), float64
                     hand vs jax.grad and directional finite-difference errors
    step_diffs.png   the float32 differences over the steps (plots.step_diffs)
    gradcheck.png    the float64 errors over the steps with their tolerances (plots.gradcheck)
    summary.json     the maxima over all steps, the tolerances and whether they are met

Exit codes: 0 every float64 check within tolerance, 1 a float64 check out of
tolerance (all outputs still written), 2 bad argument, 3 data missing or invalid,
5 training diverged (the steps so far are written).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from svhn_jax import config, errors, flags
from svhn_jax.run import parts as rundata, folder as runfolder

F32_EXPECTED_REL = 1e-5      # float32 hand vs jax.grad: rounding, ~1e-6; a reference line, not a test


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare_grads.py",
        description="Train step by step and, at every step, compare hand-derived and jax.grad "
                    "gradients on that step's batch in float32, plus the float64 per-step check "
                    "(hand vs jax.grad, directional finite difference).",
        epilog="Tolerances: float64 hand vs jax.grad <= 1e-10, float64 directional finite "
               "difference <= 1e-5 (exit 1 if either is exceeded). float32 differences are "
               "rounding; expect about 1e-6 relative.")
    p.add_argument("--out", required=True, help="folder for the outputs (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--lr", type=float, help="(peak) learning rate (default 1e-3, or the preset's)")
    p.add_argument("--fd-eps", type=float, default=None,
                   help="step of the float64 directional finite difference (default: "
                        "stepcheck.step_check's, 1e-5, the one training uses)")
    flags.add_settings(p, "lr-find")   # the training settings, as `svhn-jax train` spells them
    return p


def _float32_diffs_fn(spec, reg):
    """A jitted (params, bn_state, xb, yb) -> (loss, max abs diff, per-leaf rel diffs (L,))."""
    import jax
    import jax.numpy as jnp

    from svhn_jax.nn import model

    @jax.jit
    def diffs(params, bn_state, xb, yb):
        loss, g_manual, _, _ = model.loss_and_grads_manual(params, bn_state, xb, yb, spec, reg,
                                                           train=True)
        _, g_auto, _, _ = model.loss_and_grads_autodiff(params, bn_state, xb, yb, spec, reg,
                                                        train=True)
        pairs = list(zip(jax.tree.leaves(g_manual), jax.tree.leaves(g_auto)))
        abs_diff = jnp.stack([jnp.max(jnp.abs(m - a)) for m, a in pairs])
        rel = jnp.stack([jnp.max(jnp.abs(m - a)) / jnp.maximum(1e-8, jnp.max(jnp.abs(m) + jnp.abs(a)))
                         for m, a in pairs])
        return loss, jnp.max(abs_diff), rel

    return diffs


def summarize(rows: list[dict], tol_autodiff: float, tol_fd: float) -> dict:
    """The maxima over the steps, the tolerances and whether they are met."""
    def mx(key, where=lambda r: True):
        return float(np.max([r[key] for r in rows if where(r)], initial=0.0))  # NaN wins

    s = {"steps": len(rows),
         "max_f32_abs_diff": mx("f32_max_abs_diff"),
         "max_f32_rel_diff": mx("f32_max_rel_diff"),
         "max_f64_manual_vs_autodiff": mx("f64_manual_vs_autodiff"),
         # only where the loss is smooth along v (stepcheck.step_check explains)
         "max_f64_directional_fd": mx("f64_directional_fd", lambda r: r["f64_smooth"]),
         "f64_nonsmooth_steps": sum(not r["f64_smooth"] for r in rows),
         "tolerances": {"f64_manual_vs_autodiff": tol_autodiff, "f64_directional_fd": tol_fd,
                        "f32_rel_expected_below": F32_EXPECTED_REL}}
    s["f64_manual_vs_autodiff_ok"] = s["max_f64_manual_vs_autodiff"] <= tol_autodiff
    s["f64_directional_fd_ok"] = s["max_f64_directional_fd"] <= tol_fd
    s["f32_rel_within_rounding"] = s["max_f32_rel_diff"] <= F32_EXPECTED_REL
    s["ok"] = s["f64_manual_vs_autodiff_ok"] and s["f64_directional_fd_ok"]
    if rows:
        worst = max(rows, key=lambda r: r["f32_max_rel_diff"])
        s["max_f32_rel_diff_at"] = {"step": worst["step"], "leaf": worst["f32_worst_leaf"]}
        s["first_loss"], s["last_loss"] = rows[0]["loss"], rows[-1]["loss"]
    return s


def format_summary(s: dict) -> str:
    ok = lambda b: "ok" if b else "EXCEEDED"
    tol = s["tolerances"]
    lines = [f"over {s['steps']} steps (max over steps):",
             f"  float64 hand vs jax.grad        {s['max_f64_manual_vs_autodiff']:.2e}  "
             f"(tolerance {tol['f64_manual_vs_autodiff']:.0e}: {ok(s['f64_manual_vs_autodiff_ok'])})",
             f"  float64 directional finite diff {s['max_f64_directional_fd']:.2e}  "
             f"(tolerance {tol['f64_directional_fd']:.0e}: {ok(s['f64_directional_fd_ok'])}; "
             f"step {s['fd_eps']:.0e}; {s['f64_nonsmooth_steps']} non-smooth steps skipped)",
             f"  float32 hand vs jax.grad, rel   {s['max_f32_rel_diff']:.2e}  "
             f"(rounding; expected ~1e-6, "
             f"{'below' if s['f32_rel_within_rounding'] else 'ABOVE'} {F32_EXPECTED_REL:.0e})",
             f"  float32 hand vs jax.grad, abs   {s['max_f32_abs_diff']:.2e}"]
    if "max_f32_rel_diff_at" in s:
        at = s["max_f32_rel_diff_at"]
        lines.append(f"  largest float32 rel diff at step {at['step']}, leaf {at['leaf']}; "
                     f"loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}")
    return "\n".join(lines)


def compare(args) -> int:
    if args.steps < 1:
        raise errors.SvhnJaxError(f"--steps must be a positive integer, got {args.steps}")
    if args.fd_eps is not None and not 0 < args.fd_eps < 1:
        raise errors.SvhnJaxError(f"--fd-eps must lie between 0 and 1, got {args.fd_eps}; e.g. 1e-5")
    c = flags.make_config(args, "lr-find")
    if c.devices not in ("1", "auto"):
        raise errors.SvhnJaxError("compare_grads compares gradients on one device; drop --devices "
                                  "(svhn-jax gradcheck --devices N proves the sharded backward)")
    if args.lr is not None:
        c = c.replace(lr=args.lr)
    out = Path(args.out)
    # The data first, before JAX is imported: bad data is reported at once, and --out
    # is created only once the data are known to be good.
    X_tr, y_tr = rundata.load_split(c)["train"]

    import jax
    import jax.numpy as jnp

    from svhn_jax import atomic, plots
    from svhn_jax.run import launch as runs
    from svhn_jax.step import settings as stepconfig, train
    from svhn_jax.data import preprocess
    from svhn_jax.nn import gradcheck, stepcheck

    n = len(y_tr)
    stepconfig.check_batch(c, n)
    runfolder.ensure_run_dir(out, overwrite=args.overwrite)

    prep = preprocess.fit(X_tr, mode=c.preprocess, grayscale=c.grayscale)
    X = train.put_images(X_tr)    # uint8, normalised per batch as `svhn-jax train` does
    y = jnp.asarray(y_tr, jnp.int32)
    spe = train.steps_per_epoch(n, c.batch)
    # The steps follow `svhn-jax train` with the same settings (same initialisation,
    # batches and schedule); the schedule is stretched only if --steps outruns it.
    c = c.replace(epochs=max(c.epochs, -(-args.steps // spe)))
    cfg = stepconfig.step_config(c, spe, prep)
    hp = stepconfig.hyper(c)
    state = train.init_state(c.seed, cfg, preprocess.input_dim(prep), hp)
    leaf_names = gradcheck.leaf_names(cfg.spec, state.params)
    diffs = _float32_diffs_fn(cfg.spec, jnp.float32(c.reg))
    batch_of = jax.jit(train.get_batch, static_argnames=("cfg",))
    eps = args.fd_eps or stepcheck.FD_STEP

    print(f"compare_grads: {args.steps} steps, spec {' -> '.join(f'{k}{w}' for k, w in cfg.spec)}, "
          f"{n} training images, {c.optimizer} lr {c.lr:g}, batch {c.batch}", flush=True)
    rows, order, order_epoch = [], None, -1
    t0 = time.perf_counter()
    diverged = None
    for s in range(args.steps):
        epoch, pos = divmod(s, spe)
        if epoch != order_epoch:
            order, order_epoch = train.epoch_order(state.key, epoch, n, c.batch), epoch
        xb, yb = batch_of(X, y, order, pos, state.key, state.step, cfg)
        loss, max_abs, rel = diffs(state.params, state.bn_state, xb, yb)
        rel = np.asarray(rel)
        # the key runs._step_gradcheck uses at this step
        key = jax.random.fold_in(jax.random.fold_in(state.key, 3), s)
        f64 = stepcheck.step_check(state.params, state.bn_state, xb, yb, cfg.spec, c.reg, key,
                                   eps=eps)
        rows.append({"step": s, "epoch": epoch + 1, "loss": float(loss),
                     "f32_max_abs_diff": float(max_abs), "f32_max_rel_diff": float(rel.max()),
                     "f32_worst_leaf": leaf_names[int(rel.argmax())],
                     "f64_manual_vs_autodiff": f64["manual_vs_autodiff"],
                     "f64_directional_fd": f64["directional_fd"], "f64_smooth": f64["smooth"]})
        state, (ce, *_) = train.run_steps(state, hp, X, y, order, pos, cfg, 1)
        if not np.all(np.isfinite(np.asarray(ce))) or not np.isfinite(float(loss)):
            diverged = runs.Diverged(f"diverged at step {s + 1} (loss {float(np.asarray(ce)[0])}); "
                                     f"lower --lr (now {c.lr:g}); the steps so far are in {out}")
            break
        if (s + 1) % 100 == 0:
            runfolder.say(f"  step {s + 1}/{args.steps}  loss {float(loss):.4f}  "
                          f"{time.perf_counter() - t0:.1f}s")
    seconds = time.perf_counter() - t0

    summary = summarize(rows, stepcheck.TOL_STEP_AUTODIFF, stepcheck.TOL_STEP_DIRECTIONAL)
    summary.update(seconds=seconds, fd_eps=eps, settings=config.to_json(c))
    runfolder.write_csv(out / "grad_diffs.csv", rows)
    atomic.write_json(out / "summary.json", summary)
    plots.step_diffs([{"step": r["step"], "manual_vs_autodiff": r["f32_max_rel_diff"],
                       "max_abs_diff": r["f32_max_abs_diff"]} for r in rows],
                     out / "step_diffs.png", tol=F32_EXPECTED_REL)
    plots.gradcheck([{"step": r["step"], "manual_vs_autodiff": r["f64_manual_vs_autodiff"],
                      "directional_fd": r["f64_directional_fd"]} for r in rows],
                    out / "gradcheck.png", tol_fd=stepcheck.TOL_STEP_DIRECTIONAL,
                    tol_autodiff=stepcheck.TOL_STEP_AUTODIFF)
    if diverged is not None:
        raise diverged

    print(format_summary(summary))
    print(f"{len(rows)} steps in {seconds:.1f}s ({seconds / max(len(rows), 1) * 1e3:.1f} ms/step "
          f"with both checks)")
    print(f"wrote {out}/grad_diffs.csv, summary.json, step_diffs.png, gradcheck.png")
    if not summary["ok"]:
        print("error: a float64 gradient check exceeded its tolerance (see above)", file=sys.stderr)
        return errors.EXIT_CHECK_FAILED
    return errors.EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return errors.run(compare, args)


if __name__ == "__main__":
    sys.exit(main())

"""`svhn-jax bench`: seconds per training epoch of the same network in several
execution modes, measured back to back in one process.

The network and optimizer are those of the mission: FC(3072->H) - ReLU -
FC(H->10), softmax cross-entropy + 0.5 * 1e-4 * sum W^2, Adam lr 1e-3,
constant schedule, float32, on synthetic SVHN-shaped data (`data.synthetic`,
scaled to [-1, 1], flattened to (N, 3072)). The data are created once, put on
the device once and passed to every jitted function as an argument.

Modes, in the order they run for each (hidden, batch):

    scan_manual, scan_autodiff   `train.run_steps` over a whole epoch: one compiled
                                 lax.scan, what `svhn-jax train` runs (hand-written
                                 VJPs / jax.grad), here on float32 features, as
                                 every mode gets (training keeps uint8 images and
                                 normalises each batch in the step)
    jit_manual, jit_autodiff     one jitted step (batch gather + `train.train_step`,
                                 state donated) called from a Python loop; the
                                 device is waited for at the end of the epoch only
    eager                        the same step un-jitted (`jax.disable_jit()`):
                                 `eager_steps` steps are timed and the epoch is
                                 extrapolated from the median step (extrapolated: true)
    numpy                        `refs.numpy_epoch_fn`: NumPy by hand
    torch_eager                  `refs.torch_epoch_fn`: eager PyTorch (skipped
                                 when torch is not installed)

Protocol per mode: a first call (for the jitted modes it includes tracing and
compilation), a warm-up epoch, then `epochs` timed epochs (wall time, ended by
`block_until_ready`); s_per_epoch is their median. The batch order of an epoch
is computed before its timer starts, in every mode.

    compile_s      jitted modes: first call minus a second call of the same work
                   (scan: epoch 0 minus epoch 1; jit: step 0 minus step 1), floored
                   at 0; eager: the same difference for op-by-op dispatch; 0 for
                   numpy and torch
    samples_per_s  n / s_per_epoch (dataset images per second)
    frac_peak      flops_per_epoch(images processed) / s_per_epoch / peak. The JAX
                   modes process ceil(n/B)*B images an epoch (the last batch is
                   completed from the start of the permutation, as in training);
                   NumPy and PyTorch process floor(n/B)*B (tail dropped)
    other_busy_cores, busy
                   CPU used by OTHER processes while the mode ran (machine.load_stop)
    loss           mean training loss over the last timed epoch (eager: over its
                   last timed block): cross-entropy for the JAX modes (what
                   train_step reports), cross-entropy + L2 for numpy and torch
                   (loss_includes_l2). The JAX modes share one initialisation and
                   data order, so their losses agree to float32 rounding.

The peak is `machine.peak_gflops()` measured at the start and at the end; the
larger is used. Absolute times drift by 30% or more between runs on shared
machines: compare the ratios, which come from one run, and heed busy_warning.
`--gradcheck-every N` adds the cost of the per-step gradient check on the
mission's own network and settings (module `checks`).

`--devices 1,2,4` (or all) adds the data-parallel scaling of the scan modes:
per device count, seconds per epoch, samples/s in all and per device, and the
scaling efficiency (t_1 / t_D) / D (module `scaling`; on a CPU it measures the
overhead of data parallelism, not a speed-up).

Modules: `suite` (arguments, the run, ratios, the table), `modes` (the JAX
modes and one mode's measurement), `refs` (NumPy and PyTorch references, the
FLOP model), `machine` (peak and load), `checks` (the gradient check's cost),
`scaling` (the scan modes on device meshes).

Nothing here depends on the backend; on a GPU the NumPy and PyTorch references
still run on the CPU (runs_on).
"""

from . import scaling
from .machine import measure_load, peak_gflops
from .modes import JAX_MODES, Measurement, jax_setup, make_data, measure_jax, measure_ref
from .suite import MODES, RATIO_PAIRS, check_args, device_name, format_report, parse_modes, ratios, run

__all__ = ["MODES", "JAX_MODES", "RATIO_PAIRS", "Measurement", "parse_modes", "check_args", "make_data",
           "jax_setup", "measure_jax", "measure_ref", "ratios", "device_name", "run", "format_report",
           "measure_load", "peak_gflops", "scaling"]


def profile(hidden: int, batch: int, n: int, folder, seed: int = 0):
    """A jax.profiler trace of 5 steps of the `scan_manual` mode (`svhn-jax train`'s
    compiled step, on float32 features rather than uint8 images normalised in the
    step) on n synthetic images, after one compiling step; returns its folder."""
    import jax.numpy as jnp

    from ..run import profiling
    from ..step import train

    cfg, hp = jax_setup(hidden, batch, "manual", seed)
    X, y = make_data(n, seed)
    state = train.init_state(seed, cfg, X.shape[1], hp)
    return profiling.profile_training(state, hp, jnp.asarray(X), jnp.asarray(y), cfg, n, folder)

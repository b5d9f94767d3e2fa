"""`svhn-jax bench`: seconds per training epoch of the same network in several
execution modes, measured back to back in one process, against the floor the
machine allows.

What is trained: `svhn-jax train --preset mission --hidden H --batch B`
(`modes.run_config`, turned into the step's settings by `step.settings` as
training does): Dense(1024 -> H) - ReLU - Dense(10), softmax cross-entropy +
0.5 * 3e-3 * sum W^2, Adam lr 3e-3 on a cosine schedule, float32, on n
synthetic SVHN-shaped images (`data.synthetic`). The images are made once;
the JAX modes get them as training keeps them, uint8 rows (n, 3072) on the
device, passed to every jitted function as an argument, and each batch is
turned to luminance, standardised per image and shifted by up to 2 pixels
inside the step.

Modes, in the order they run for each (hidden, batch):

    scan_manual, scan_autodiff   `train.run_steps` over a whole epoch: one compiled
                                 lax.scan, what `svhn-jax train` runs (hand-written
                                 VJPs / jax.grad)
    scan_features                scan_manual on float32 features prepared beforehand
                                 (`preprocess.apply`, (n, 1024), shifted in the step):
                                 what normalising each batch in the step costs
    jit_manual, jit_autodiff     one jitted step (batch gather + `train.train_step`,
                                 state donated) called from a Python loop; the
                                 device is waited for at the end of the epoch only
    eager                        the same step un-jitted (`jax.disable_jit()`):
                                 `eager_steps` steps are timed and the epoch is
                                 extrapolated from the median step (extrapolated: true)
    numpy                        `refs.numpy_epoch_fn`: NumPy by hand
    torch_eager                  `refs.torch_epoch_fn`: eager PyTorch (skipped
                                 when torch is not installed)

The references train the same network with the same learning rate and L2
(constant schedule) on the float32 features, without shifts: less work per
step than the training path, so a speed-up over them understates JAX's.

Protocol (`modes.measure`): for each (hidden, batch), every mode first trains
what is not timed, a first call (for the jitted modes it includes tracing and
compilation) and a warm-up epoch; then `epochs` rounds time one epoch of every
mode each (wall time, ended by `block_until_ready`), in alternating order (first
to last, then last to first), so that a load that comes and goes on a shared
machine hits every mode alike instead of whichever ran during it. The batch
order of an epoch is computed before any timer starts, in every mode.

    s_per_epoch    median of the timed epochs; spread (slowest - fastest) / median
    compile_s      jitted modes: first call minus a second call of the same work
                   (scan: epoch 0 minus epoch 1; jit: step 0 minus step 1), floored
                   at 0; eager: the same difference for op-by-op dispatch; 0 for
                   numpy and torch
    samples_per_s  n / s_per_epoch (dataset images per second)
    compute_floor_s, memory_floor_s, floor_s, bound, frac_floor
                   the epoch's roofline (module `roofline`: matmul FLOPs at the
                   measured peak; bytes of parameters, gradients, Adam slots and
                   batch at the measured bandwidths) and floor_s / s_per_epoch.
                   The JAX modes process ceil(n/B)*B images an epoch (the last
                   batch is completed from the start of the permutation, as in
                   training); NumPy and PyTorch process floor(n/B)*B (tail dropped)
    other_busy_cores, busy
                   CPU used by OTHER processes while the mode ran (machine.load_stop)
    loss           mean training loss over the last timed epoch (eager: over its
                   last timed block): cross-entropy for the JAX modes (what
                   train_step reports), cross-entropy + L2 for numpy and torch
                   (loss_includes_l2). The JAX modes share one initialisation and
                   data order, so their losses agree to float32 rounding.

The peak (`machine.peak_gflops`) and the bandwidths (`machine.bandwidth_gbs`,
streaming and at the size of each network's state) are measured at the start
and at the end; the larger of each is used. Absolute times drift by 30% or
more between runs on shared machines: compare the ratios, which come from one
run, and heed busy_warning; `scripts/bench_compare.py` compares two revisions
of the code interleaved. `--gradcheck-every N` adds the cost of the per-step
gradient check on the same training (module `checks`).

`--devices 1,2,4` (or all) adds the data-parallel scaling of the scan modes:
per device count, seconds per epoch, samples/s in all and per device, and the
scaling efficiency (t_1 / t_D) / D (module `scaling`; on a CPU it measures the
overhead of data parallelism, not a speed-up).

Modules: `suite` (arguments, the run, ratios, the table), `modes` (the data,
the settings, the JAX modes and one mode's measurement), `roofline` (the
floors and the byte model), `refs` (NumPy and PyTorch references, the FLOP
model), `machine` (peak, bandwidth and load), `checks` (the gradient check's
cost), `scaling` (the scan modes on device meshes).

Nothing here depends on the backend; on a GPU the NumPy and PyTorch references
still run on the CPU (runs_on).
"""

from . import scaling
from .machine import measure_load, peak_gflops
from .modes import (JAX_MODES, Data, Measurement, Runner, jax_runner, jax_setup, make_data, measure,
                    measure_jax, ref_runner, run_config)
from .suite import MODES, RATIO_PAIRS, check_args, device_name, format_report, parse_modes, ratios, run

__all__ = ["MODES", "JAX_MODES", "RATIO_PAIRS", "Data", "Measurement", "Runner", "parse_modes", "check_args",
           "make_data", "run_config", "jax_setup", "jax_runner", "ref_runner", "measure", "measure_jax", "ratios",
           "device_name", "run", "format_report", "measure_load", "peak_gflops", "scaling"]


def profile(hidden: int, batch: int, n: int, folder, seed: int = 0):
    """A jax.profiler trace of 5 steps of the `scan_manual` mode (`svhn-jax train`'s
    compiled step: uint8 images normalised and shifted in the step) on n synthetic
    images, after one compiling step; returns its folder."""
    import jax

    from ..data import preprocess
    from ..run import profiling
    from ..step import train

    data = make_data(n, seed)
    cfg, hp = jax_setup(run_config(hidden, batch, seed=seed), n, data.fitted)
    state = train.init_state(seed, cfg, preprocess.input_dim(data.fitted), hp)
    X, y = jax.device_put(data.images), jax.device_put(data.labels)
    return profiling.profile_training(state, hp, X, y, cfg, n, folder)

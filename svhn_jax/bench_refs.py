"""Kept so that `from svhn_jax import bench_refs` goes on working (scripts/bench_sweep.py):
the references now live in `svhn_jax.bench.refs`, the peak and load measurements
in `svhn_jax.bench.machine`."""

from .bench.machine import (BUSY_THRESHOLD_CORES, load_start, load_stop, measure_load,
                            numpy_peak_gflops, peak_gflops)
from .bench.refs import (ADAM_B1, ADAM_B2, ADAM_EPS, NumpyMLP, flops_per_epoch,
                         init_params, numpy_epoch_fn, torch_epoch_fn)

__all__ = ["BUSY_THRESHOLD_CORES", "load_start", "load_stop", "measure_load", "numpy_peak_gflops",
           "peak_gflops", "ADAM_B1", "ADAM_B2", "ADAM_EPS", "NumpyMLP", "flops_per_epoch", "init_params",
           "numpy_epoch_fn", "torch_epoch_fn"]

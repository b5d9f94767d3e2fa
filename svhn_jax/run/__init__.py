"""A training run: the one engine around the compiled step, and what it writes.

    engine       the loop: K >= 1 models (a single run, an ensemble, a sweep group,
                 the range test), segments, checks, divergence, early stopping,
                 checkpoints, stop requests
    outputs      what a run folder receives: history, best.npz, the final test, metrics
    launch       train_run / resume_run: what `svhn-jax train` calls
    parts        a run's data: load, split, overlap counts
    folder       the run folder: config.json, CSV tables, console lines (no JAX)
    progress     the typed progress record every checkpoint holds (no JAX)
    checkpoint   atomic, checksummed checkpoints
    processes    several processes: joining them, sums and gathers over them
    evaluate     `svhn-jax evaluate`
    tblog        TensorBoard event files
    profiling    jax.profiler traces
"""

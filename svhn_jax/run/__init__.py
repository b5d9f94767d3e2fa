"""A training run: the loop around the compiled step and everything it writes.

    launch       train_run / resume_run: what `svhn-jax train` calls
    ensemble     K seeds trained at once and scored as one model
    parts        a run's data: load, split, overlap counts
    folder       the run folder: config.json, CSV tables, console lines (no JAX)
    progress     the typed progress record every checkpoint holds (no JAX)
    checkpoint   atomic, checksummed checkpoints
    evaluate     `svhn-jax evaluate`
    tblog        TensorBoard event files
    profiling    jax.profiler traces
"""

"""svhn_jax: a purely functional JAX MLP for SVHN whose backward passes are derived by
hand and proved right, trained fast on one device or many.

What it offers, from the inside out:

    nn/          the maths: layers with hand-derived VJPs, losses, the MLP, optimizers,
                 schedules, and the gradient checks (per layer, whole model, every
                 training step, sharded over devices); imports nothing else of the package
    data/        SVHN without TensorFlow (download, tensorflow-datasets builder, .mat,
                 .npz, synthetic), splits, preprocessing, image fingerprints
    config       RunConfig: every setting of a run, once
    train        the jitted step and whole-epoch lax.scan, with the per-step check inside
    parallel     data-parallel training on a device mesh, over one or several processes
    runs         a training run and its folder (with progress, runfolder, rundata,
                 checkpoint, evaluate, tblog for TensorBoard, profiling)
    ensemble     K seeds trained at once, spread over devices (models_axis), one model
    tune         sweeps on validation (vmapped), lrfind
    bench, plots benchmarks and figures
    cli          the `svhn-jax` command (flags built from RunConfig)

README.md, "Python API", shows the ten lines that train and check a model in a notebook.
"""

__version__ = "0.3.0"

"""A short data-parallel training run shared by the multi-device tests and the
multi-process worker (not a test file). Importing it starts no JAX backend, so
a worker can still call jax.distributed.initialize afterwards.
"""

import numpy as np

from svhn_jax.step import mesh as meshes
from svhn_jax.step import parallel, train
from svhn_jax.nn import model

N_TRAIN, N_VAL, BATCH, SEGMENT = 370, 200, 32, 6   # 12 steps per epoch, the last batch wraps
RUN_STEPS = 3 * SEGMENT                            # an epoch and a half, in segments
HP = train.Hyper(np.float32(1e-2), np.float32(1e-4))
# float32 training, same seed and global batch: the largest parameter difference
# between a run on 1, 2, 4 or 8 devices (one or two processes) and one device
# without a mesh, relative to the largest entry of its leaf. Measured on this run:
# 0 on a 1-device mesh, up to 2.8e-07 on 2-8 devices (3.4e-07 after 120 steps):
# summation order only. The bound leaves a margin of about 6.
TOL_DEVICES = 2e-6


def data():
    """(X, y) train and validation: one colour per class, which survives the shifts."""
    rng = np.random.default_rng(0)
    colours = rng.normal(size=(10, 3))
    y = rng.integers(0, 10, N_TRAIN + N_VAL).astype(np.int32)
    X = (colours[y][:, None, :] + 0.5 * rng.normal(size=(len(y), 16, 3))).reshape(len(y), 48)
    X = X.astype(np.float32)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def cfg(mode):
    return train.StepConfig(spec=model.make_spec((16,), batchnorm="before"), batch=BATCH,
                            grad_mode=mode, shift=1, image_shape=(4, 4, 3))


def run(mode, place=None, state=None, start_step=0, stop_step=RUN_STEPS, Xy=None):
    """Steps start_step .. stop_step in segments of SEGMENT, on the placement (None:
    train.run_steps on one device). Xy: the training arrays already placed
    (default: all of data()'s, sharded here). -> (state, cross-entropy per step)."""
    c = cfg(mode)
    X, y = Xy or data()[:2]
    state = state or train.init_state(0, c, 48, HP)
    if place is not None and Xy is None:
        X, y = meshes.shard_rows(X, y, place)
    spe = train.steps_per_epoch(N_TRAIN, BATCH)
    ces = []
    for step in range(start_step, stop_step, SEGMENT):
        epoch, pos = divmod(step, spe)
        order = train.epoch_order(state.key, epoch, N_TRAIN, BATCH)
        if place is None:
            state, (ce, _) = train.run_steps(state, HP, X, y, order, pos, c, SEGMENT)
        else:
            state, (ce, _) = parallel.run_steps(state, HP, X, y, order, pos, c, SEGMENT, place)
        ces.append(np.asarray(ce))
    return state, np.concatenate(ces)


def max_diff(a, b):
    """Largest |a - b| over the leaves, each relative to its leaf's largest |b|."""
    import jax

    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))) / np.max(np.abs(np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

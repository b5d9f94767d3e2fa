"""One process of a multi-process run (not a test file): started by
tests/test_parallel.py as `python tests/parallel_worker.py OUT_DIR` with the
SVHN_JAX_* settings and JAX_NUM_CPU_DEVICES in its environment.

It joins the others, loads only the training rows its devices hold, trains
cases.run (hand backward) on a mesh over every process's devices, and writes
the final parameters and validation accuracy to OUT_DIR/process<i>.npz.
"""

import sys
from pathlib import Path

import jax
import numpy as np

from svhn_jax.run import processes
from svhn_jax.step import evaluate, mesh as meshes

import parallel_cases as cases


def main(out: Path) -> None:
    assert processes.initialize(timeout_s=60)
    place = meshes.data_placement("all")
    X, y, X_val, y_val = cases.data()
    part = meshes.local_rows(cases.N_TRAIN, place)
    rows = slice(part.start, min(part.stop, cases.N_TRAIN))
    Xy = meshes.shard_rows(X[rows], y[rows], place, cases.N_TRAIN)   # only this process's rows
    results = {"local_devices": jax.local_device_count(), "devices": jax.device_count(),
               "rows_start": part.start, "rows_stop": part.stop}
    state, results["ce"] = cases.run("manual", place, Xy=Xy)   # the hand-written collectives
    val = meshes.replicate(evaluate.make_eval_set(X_val, y_val), place)
    results["val_acc"] = evaluate.evaluate(state.params, state.bn_state, val, cases.cfg("manual").spec)[1]
    for i, leaf in enumerate(jax.tree.leaves((state.params, state.bn_state))):
        results[f"leaf{i}"] = np.asarray(leaf)   # replicated: readable in every process
    np.savez(out / f"process{jax.process_index()}.npz", **results)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""One of two processes running the composition cells that need several processes
(not a test file; tests/test_processes.py starts it as
`python tests/compose_worker.py PROCESS_ID PORT OUT_DIR` with 2 forced CPU devices):
an ensemble of 2 on the 2 x 2 mesh of both processes with the per-step check,
mid-epoch checkpoints and an exact resume (compose_cases.flow), a sweep group, the
learning-rate range test with the per-step check, and a sweep stopped by a Ctrl-C to
process 1 alone and resumed (compose_cases.stopped_sweep). Writes what the parent compares
to OUT_DIR/process{I}.json."""

import json
import sys
from pathlib import Path

import pytest

from svhn_jax.run import processes

import compose_cases as cases


def main(pid: int, port: int, out: Path) -> None:
    assert processes.initialize(f"localhost:{port}", 2, pid, timeout_s=30)
    import jax

    from svhn_jax import config
    from svhn_jax.run import parts
    from svhn_jax.tune import lrfind, sweep

    ens = cases.flow(out / "ensemble", ensemble=2, devices="all")
    c = config.make(**{**cases.SETTINGS, "checkpoint_every": 0, "devices": "all"})
    data = parts.load_split(c)
    data.pop("test")
    group = sweep.train_group([c.replace(lr=lr) for lr in (1e-3, 3e-3)], data)
    lr = lrfind.lr_find(c, out / "lr_find", steps=20, lr_min=1e-5, lr_max=1.0, overwrite=True)
    with pytest.MonkeyPatch.context() as mp:   # a Ctrl-C to process 1 alone stops both
        resumed, whole = cases.stopped_sweep(out / "sweep", mp, stop_in_process=1)
    (out / f"process{pid}.json").write_text(json.dumps({
        "devices": jax.device_count(), "ensemble": ens,
        "sweep_val_loss": [[h["val_loss"] for h in r["history"]] for r in group],
        "sweep_checks": [len(r["gradchecks"]) for r in group], "lr_find": lr,
        "sweep_resumed_as_whole": resumed == whole}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))

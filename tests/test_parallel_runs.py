"""Data-parallel runs from the command line: the README's two-process commands as
written, and a run's result and checkpoints independent of the device count."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
from parallel_cases import TOL_DEVICES   # largest parameter difference between device counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("SVHN_JAX_", "JAX_NUM_CPU"))}


def _two_processes(argv_of, cwd) -> list[str]:
    """Run `svhn-jax argv_of(i, port)` as processes i = 0, 1 of two with 2 CPU devices
    each, joined at localhost:port; their stdouts."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "svhn_jax.cli", *argv_of(i, port)],
                              env=dict(_env(), JAX_NUM_CPU_DEVICES="2"), cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=240)
        finally:
            p.kill()
        assert p.returncode == 0, stderr
        outs.append(stdout)
    return outs


def test_the_readme_two_process_commands_write_one_run_folder(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"two local processes.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = [line.rstrip(" &") for line in block.strip().splitlines()]
    assert len(lines) == 2 and all("--process-id" in line for line in lines)
    out = tmp_path / "mp"

    def argv(i, port):
        env_part, *cmd = lines[i].replace("localhost:1234", f"localhost:{port}") \
                                 .replace("runs/mp", str(out)).split()
        assert env_part == "JAX_NUM_CPU_DEVICES=2" and cmd[0] == "svhn-jax"
        return [*cmd[1:], "--json"]

    results = [json.loads(stdout) for stdout in _two_processes(argv, tmp_path)]  # JSON alone
    assert results[0]["params_sha256"] == results[1]["params_sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["params_sha256"] == results[0]["params_sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mp"]      # one run folder


SCRIPT = """
import json, sys, numpy as np
from svhn_jax import config
from svhn_jax.run import launch as runs
out = sys.argv[1]
c = config.make(data="synthetic", synthetic_n=1200, hidden=[16], batchnorm="before", epochs=2,
                batch=64, shift=1, devices="4", checkpoint_every=7)
try:
    runs.train_run(c, out + "/d4", quiet=True, stop_after_steps=20)
except runs.Interrupted:
    pass
resumed = runs.resume_run(out + "/d4", quiet=True, devices="1")      # started on 4, ends on 1
alone = runs.train_run(c.replace(devices="1", checkpoint_every=0), out + "/d1", quiet=True)
both = [np.load(out + f"/{r}/checkpoint.npz") for r in ("d4", "d1")]
diff = max(float(np.max(np.abs(both[0][k] - both[1][k])) / max(1e-30, np.max(np.abs(both[1][k]))))
           for k in both[1].files if k != "__meta__" and both[1][k].dtype.kind == "f")
print(json.dumps({"diff": diff, "val": [resumed["best_val_acc"], alone["best_val_acc"]]}))
"""


def test_four_devices_then_one_equal_one_device(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       env=dict(_env(), JAX_NUM_CPU_DEVICES="4"), timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["diff"] <= TOL_DEVICES, got
    assert got["val"][0] == got["val"][1]


LR_FIND = """
import csv, json, sys
from svhn_jax import config
from svhn_jax.tune import lrfind
out = sys.argv[1]
losses = {}
for d in ("1", "2"):
    c = config.make(data="synthetic", synthetic_n=600, hidden=[16], batchnorm="before", batch=32,
                    devices=d)
    assert lrfind.lr_find(c, out + "/d" + d, lr_min=1e-4, lr_max=1e-1, steps=30)["devices"] == int(d)
    losses[d] = [float(r["loss"]) for r in csv.DictReader(open(out + "/d" + d + "/lr_find.csv"))]
print(json.dumps(losses))
"""


def test_lr_find_on_two_devices_equals_one_device(tmp_path):
    r = subprocess.run([sys.executable, "-c", LR_FIND, str(tmp_path)], capture_output=True, text=True,
                       env=dict(_env(), JAX_NUM_CPU_DEVICES="2"), timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(got["1"]) == len(got["2"]) == 30
    diff = max(abs(a - b) / abs(b) for a, b in zip(got["2"], got["1"]))
    assert diff <= TOL_DEVICES, diff     # the loss of the same parameters, summed in another order


def test_two_processes_each_with_half_the_rows_derive_what_one_process_does(tmp_path):
    """Each process reads only its training rows; the fitted statistics (here per-channel
    histograms) and the training images' fingerprints are joined over the processes
    and equal those of a single process reading everything."""
    common = ["train", "--data", "synthetic", "--synthetic-n", "1000", "--hidden", "8", "--epochs",
              "1", "--preprocess", "channel", "--no-grayscale", "--no-tensorboard", "--json"]
    _two_processes(lambda i, port: [*common, "--devices", "all", "--out", str(tmp_path / "two"),
                                    "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                    "--process-id", str(i)], tmp_path)
    one = subprocess.run([sys.executable, "-m", "svhn_jax.cli", *common, "--out", str(tmp_path / "one")],
                         env=_env(), capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr
    derived = [json.loads((tmp_path / r / "config.json").read_text())["derived"] for r in ("two", "one")]
    for key in ("preprocessing", "n_train", "n_val", "n_test", "overlap_train_val", "overlap_train_test"):
        assert derived[0][key] == derived[1][key], key
    import numpy as np
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "train_fingerprints.npy"),
                                  np.load(tmp_path / "one" / "train_fingerprints.npy"))

"""`svhn-jax bench --devices`: the data-parallel scaling report, its arithmetic,
the agreement of the device counts' losses, the CPU caveat and the argument errors.

One bench run on 2 forced CPU devices in a subprocess (JAX creates devices only at
start-up); no timing assertions, only how the reported figures relate.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from svhn_jax import bench, cli
from svhn_jax.bench import scaling
from svhn_jax.errors import SvhnJaxError

N, H, B, DEVICES = 256, 16, 8, (1, 2)
# Largest |loss_D - loss_1| over every step, float32, same seed and global batch.
# The losses are at most about ln 10 = 2.3 (they start there and fall), where one
# float32 ulp is 2.4e-7; measured on this run on 1, 2, 4 and 8 devices, seeds 0-2,
# 3-6 epochs: up to 7.2e-7 (3 ulp, summation order only). The bound leaves a margin
# of about 5, as parallel_cases.TOL_DEVICES does for the parameters; a step that
# skipped a cross-device reduction would change the loss in its first digits.
TOL_LOSS = 4e-6


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "svhn_jax.cli", "bench", "--devices", "1,2", "--modes", "none",
                        "--hidden", str(H), "--batch", str(B), "--n", str(N), "--epochs", "1", "--json"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return _strict(r.stdout)  # stdout is the JSON object alone


def test_scaling_report_structure_and_arithmetic(report):
    section = report["scaling"]
    assert report["results"] == [] and report["backend"] == "cpu"
    assert section["devices"] == list(DEVICES) and section["modes"] == ["scan_manual", "scan_autodiff"]
    records = section["records"]
    assert [(r["mode"], r["mesh"], r["devices"]) for r in records] == [
        (m, mesh, d) for m in ("scan_manual", "scan_autodiff") for mesh, d in ((False, 1), (True, 1), (True, 2))]
    for mode in ("scan_manual", "scan_autodiff"):
        rs = {(r["mesh"], r["devices"]): r for r in records if r["mode"] == mode}
        t0, t1 = rs[False, 1]["s_per_epoch"], rs[True, 1]["s_per_epoch"]
        assert rs[False, 1]["speedup"] is None and rs[False, 1]["efficiency"] is None
        for (mesh, d), r in rs.items():
            assert (r["hidden"], r["batch"], r["n"]) == (H, B, N)
            assert r["per_device_batch"] == B // d
            assert r["s_per_epoch"] > 0 and len(r["epoch_s"]) == 1
            assert r["samples_per_s"] == pytest.approx(N / r["s_per_epoch"])
            assert r["samples_per_s_per_device"] == pytest.approx(N / r["s_per_epoch"] / d)
            assert r["speedup_vs_no_mesh"] == pytest.approx(t0 / r["s_per_epoch"])
            if mesh:
                assert r["speedup"] == pytest.approx(t1 / r["s_per_epoch"])
                assert r["efficiency"] == pytest.approx(t1 / r["s_per_epoch"] / d)
        assert rs[True, 1]["efficiency"] == 1.0


def test_device_counts_train_the_same_model(report):
    """Same seed, same global batch: every step's loss agrees up to summation order."""
    section = report["scaling"]
    diffs = [r["max_loss_diff_vs_1"] for r in section["records"]]
    assert section["max_loss_diff"] == max(diffs) <= TOL_LOSS
    assert all(d == 0.0 for r, d in zip(section["records"], diffs) if r["devices"] == 1)
    for r in section["records"]:
        assert 0 < r["loss"] < 2.5


def test_cpu_caveat_in_json_and_text(report):
    note = report["scaling"]["note"]
    assert "overhead" in note and "not a speed-up" in note and "JAX_NUM_CPU_DEVICES" in note
    text = bench.format_report(report)
    assert "efficiency = (t_1 / t_D) / D" in text and f"NOTE: {note}" in text
    for mode in ("scan_manual", "scan_autodiff"):
        assert text.count(f"\n  {mode} ") == 3  # no mesh, 1 and 2 devices
    assert scaling.cpu_note("gpu", (1, 2)) is None


def _bench(argv):
    return cli.main(["bench", "--modes", "none", "--hidden", str(H), "--n", str(N), "--epochs", "1", *argv])


def test_batch_that_does_not_split_fails_before_jax_work(capsys, monkeypatch):
    monkeypatch.setattr(scaling, "resolve", lambda *a: pytest.fail("reached the device set-up"))
    assert _bench(["--devices", "1,3", "--batch", "8"]) == 2
    err = capsys.readouterr().err
    assert "batch of 8 does not split evenly over 3 devices" in err
    assert "multiple of 3 (e.g. 6) or --devices 1" in err


def test_more_devices_than_available_says_how_to_get_them(capsys):
    n = jax.device_count() + 1
    assert _bench(["--devices", f"1,{n}", "--batch", str(8 * n)]) == 2
    err = capsys.readouterr().err
    assert f"--devices {n} asks for more devices than JAX sees" in err
    if jax.default_backend() == "cpu":
        assert f"JAX_NUM_CPU_DEVICES={n}" in err


@pytest.mark.parametrize("value", ["foo", "0", "1,x", "", "2,-1"])
def test_unknown_device_values_exit_2(capsys, value):
    assert _bench(["--devices", value, "--batch", "8"]) == 2
    captured = capsys.readouterr()
    assert f"--devices must be device counts like 1,2,4 or all, got {value!r}" in captured.err
    assert captured.out == ""


def test_all_is_powers_of_two_and_the_count(monkeypatch):
    assert scaling.parse_devices("4,1,2,2") == (1, 2, 4) and scaling.parse_devices(None) is None
    monkeypatch.setattr(jax, "device_count", lambda: 6)
    assert scaling.resolve("all", (12,)) == (1, 2, 4, 6)
    with pytest.raises(SvhnJaxError, match="batch of 8 does not split evenly over 6 devices"):
        scaling.resolve("all", (8,))

"""`svhn-jax bench`: report schema, agreement of the modes, argument errors.

No timing assertions: timing is for benchmarks, never pass/fail. The modes run
on a tiny problem (512 images, hidden 16, batch 64, one timed epoch).
"""

import json
import math

import numpy as np
import pytest

from svhn_jax import bench, cli, cli_tools
from svhn_jax.bench import refs
from svhn_jax.errors import SvhnJaxError

N, H, B = 512, 16, 64
RECORD_KEYS = {"mode", "hidden", "batch", "n", "compile_s", "s_per_epoch", "samples_per_s",
               "frac_peak", "extrapolated", "other_busy_cores", "busy", "loss"}


@pytest.fixture(scope="module")
def measured():
    """(report, {mode: Measurement}) of every mode, measured once for the module."""
    keep = []
    report = bench.run((H,), (B,), epochs=1, n=N, modes=bench.MODES, seed=0, peak_size=256, keep=keep,
                       gradcheck_every=2)
    return report, {m.record["mode"]: m for m in keep}


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_report_schema(measured):
    report, _ = measured
    report = json.loads(json.dumps(report))  # JSON-serialisable as is
    for key in ("peak_gflops", "device", "backend", "results", "ratios", "busy_warning"):
        assert key in report
    assert _positive(report["peak_gflops"])
    assert report["peak_gflops"] == max(report["peak_gflops_start"], report["peak_gflops_end"])
    assert isinstance(report["busy_warning"], bool)
    modes = [r["mode"] for r in report["results"]]
    skipped = [s["mode"] for s in report["skipped"]]
    expected = [m for m in bench.MODES if m not in skipped]
    assert modes == expected  # every mode, in the documented order
    if refs.torch_epoch_fn(2, 1, 4) is not None:
        assert "torch_eager" in modes
    for r in report["results"]:
        assert RECORD_KEYS <= set(r), r["mode"]
        assert (r["hidden"], r["batch"], r["n"]) == (H, B, N)
        for k in ("s_per_epoch", "samples_per_s", "frac_peak", "loss"):
            assert _positive(r[k]), (r["mode"], k, r[k])
        assert math.isfinite(r["compile_s"]) and r["compile_s"] >= 0
        assert r["samples_per_s"] == pytest.approx(N / r["s_per_epoch"])
        assert r["extrapolated"] is (r["mode"] == "eager")
        if r["other_busy_cores"] is not None:  # None only where /proc/stat is missing
            assert r["other_busy_cores"] >= 0 and isinstance(r["busy"], bool)
        if r["mode"] in ("numpy", "torch_eager"):
            assert r["compile_s"] == 0.0 and r["runs_on"] == "cpu"
            assert r["images_per_epoch"] == N // B * B
        else:
            assert r["images_per_epoch"] == -(-N // B) * B
    ratios = report["ratios"][f"h{H}_b{B}"]
    t = {r["mode"]: r["s_per_epoch"] for r in report["results"]}
    assert ratios["scan_manual_vs_scan_autodiff"] == pytest.approx(t["scan_autodiff"] / t["scan_manual"])
    assert ratios["jit_manual_vs_jit_autodiff"] == pytest.approx(t["jit_autodiff"] / t["jit_manual"])


def test_jax_modes_run_the_same_training(measured):
    """Same init, same data order, same math: scan and jit steps agree bit for bit in
    each gradient mode, manual vs autodiff and eager to float32 rounding."""
    _, m = measured
    ref = m["scan_manual"]
    steps = -(-N // B) * 3  # epoch 0 (with compilation), warm-up, one timed epoch
    assert ref.step_losses.shape == (steps,)
    assert np.all(np.isfinite(ref.step_losses))
    assert ref.step_losses[-1] < ref.step_losses[0]  # it trains
    for grad in ("manual", "autodiff"):
        scan, jit = m[f"scan_{grad}"], m[f"jit_{grad}"]
        np.testing.assert_array_equal(jit.step_losses, scan.step_losses)
        _assert_params(jit.params, scan.params, atol=0)
        assert jit.record["loss"] == scan.record["loss"]
    auto = m["scan_autodiff"]
    np.testing.assert_allclose(auto.step_losses, ref.step_losses, rtol=1e-4, atol=1e-6)
    _assert_params(auto.params, ref.params, atol=1e-5)
    assert auto.record["loss"] == pytest.approx(ref.record["loss"], rel=1e-4, abs=1e-6)
    eager = m["eager"]
    k = len(eager.step_losses)
    assert k == 2 + 20  # two warm-up steps, one timed block
    np.testing.assert_allclose(eager.step_losses, ref.step_losses[:k], rtol=1e-3, atol=1e-5)


def _assert_params(a, b, atol):
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        assert pa.keys() == pb.keys()
        for key in pa:
            np.testing.assert_allclose(pa[key], pb[key], rtol=0, atol=atol)


def test_numpy_and_torch_references_agree(measured):
    _, m = measured
    if "torch_eager" not in m:
        pytest.skip("torch is not installed")
    np.testing.assert_allclose(m["torch_eager"].step_losses, m["numpy"].step_losses, rtol=1e-4)


def test_gradcheck_cost_is_measured_side_by_side(measured):
    report, _ = measured
    (r,) = report["gradcheck"]
    assert (r["hidden"], r["batch"], r["n"], r["every"], r["checks_per_epoch"]) == (H, B, N, 2, 4)
    assert len(r["epoch_s_plain"]) == len(r["epoch_s_checked"]) == 1
    assert _positive(r["s_per_epoch_plain"]) and _positive(r["s_per_epoch_checked"])
    assert r["ratio"] == r["s_per_epoch_checked"] / r["s_per_epoch_plain"]
    text = bench.format_report(report)
    assert "per-step gradient check" in text and f"{r['ratio']:5.2f}x" in text


def test_table_marks_extrapolation_and_busy(measured):
    report, _ = measured
    text = bench.format_report(report)
    assert "eager" in text and "extrapolated" in text
    assert "scan_manual vs scan_autodiff" in text
    assert ("WARNING" in text) == report["busy_warning"]
    busy = json.loads(json.dumps(report))
    busy["results"][0]["busy"] = True
    busy["busy_warning"] = True
    text = bench.format_report(busy)
    assert "WARNING" in text and "BUSY" in text


def test_cli_json_is_the_only_stdout(capsys):
    code = cli.main(["bench", "--n", str(N), "--epochs", "1", "--batch", str(B), "--hidden", str(H),
                     "--modes", "numpy,scan_manual", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert [r["mode"] for r in report["results"]] == ["scan_manual", "numpy"]
    assert report["backend"] and report["device"]


def test_missing_torch_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(refs, "torch_epoch_fn", lambda *a, **k: None)
    report = bench.run((4,), (8,), epochs=1, n=16, modes="torch_eager", peak_size=64)
    assert report["results"] == []
    assert report["skipped"][0]["mode"] == "torch_eager"
    assert 'pip install -e ".[bench]"' in report["skipped"][0]["reason"]   # the project's extra
    assert "skipped" in bench.format_report(report)


@pytest.mark.parametrize("argv, message", [
    (["--modes", "scan_manual,warp_drive"], "unknown mode 'warp_drive'"),
    (["--modes", ","], "no modes"),
    (["--batch", "1024"], "larger than the data"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--n", "0"], "--n must be a positive"),
    (["--eager-steps", "0"], "--eager-steps"),
    (["--gradcheck-every", "-1"], "--gradcheck-every must be an integer >= 0"),
    (["--modes", "none"], "nothing to measure"),
])
def test_bad_arguments_exit_2(capsys, argv, message):
    code = cli.main(["bench", "--n", str(N), "--batch", str(B), "--hidden", str(H), *argv])
    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_bad_hidden_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--hidden", "0"])
    assert e.value.code == 2
    assert "positive" in capsys.readouterr().err


def test_library_validation():
    with pytest.raises(SvhnJaxError, match="hidden"):
        bench.check_args((0,), (8,), 1, 16)
    assert bench.parse_modes("numpy,scan_manual") == ("scan_manual", "numpy")
    assert cli_tools.MODES_FOR_HELP == bench.MODES


def test_profile_writes_a_trace(tmp_path, capsys):
    assert cli.main(["bench", "--modes", "scan_manual", "--hidden", "8", "--batch", "16", "--n", "64",
                     "--epochs", "1", "--quiet", "--profile", str(tmp_path / "prof")]) == 0
    assert list((tmp_path / "prof").rglob("*.xplane.pb"))
    assert "profile of 5 scan_manual steps" in capsys.readouterr().err

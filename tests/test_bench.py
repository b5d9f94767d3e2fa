"""`svhn-jax bench`: report schema, agreement of the modes, the roofline's
arithmetic and byte model, argument errors.

No timing assertions: timing is for benchmarks, never pass/fail. The modes run
on a tiny problem (512 images, hidden 16, batch 64, one timed epoch).
"""

import json
import math

import numpy as np
import pytest

from svhn_jax import bench, cli, cli_tools, config
from svhn_jax.step import settings, train
from svhn_jax.bench import machine, modes, refs, roofline
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model

N, H, B = 512, 16, 64
RECORD_KEYS = {"mode", "hidden", "batch", "n", "inputs", "in_dim", "compile_s", "s_per_epoch", "spread",
               "epoch_s", "samples_per_s", "compute_floor_s", "memory_floor_s", "floor_s", "bound",
               "frac_floor", "extrapolated", "other_busy_cores", "busy", "loss"}


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
    for key in ("peak_gflops", "stream_gbs", "state_gbs", "device", "backend", "results", "ratios",
                "busy_warning"):
        assert key in report
    assert _positive(report["peak_gflops"]) and _positive(report["stream_gbs"])
    assert report["peak_gflops"] == max(report["peak_gflops_start"], report["peak_gflops_end"])
    (state,) = report["state_gbs"]
    assert state["hidden"] == H and _positive(state["gbs"])
    assert state["bytes"] == roofline.state_bytes(roofline.param_count(model.make_spec((H,)), 1024))
    assert isinstance(report["busy_warning"], bool)
    measured = [r["mode"] for r in report["results"]]
    skipped = [s["mode"] for s in report["skipped"]]
    expected = [m for m in bench.MODES if m not in skipped]
    assert measured == expected  # every mode, in the documented order
    if refs.torch_epoch_fn(2, 1, 4) is not None:
        assert "torch_eager" in measured
    for r in report["results"]:
        assert RECORD_KEYS <= set(r), r["mode"]
        assert (r["hidden"], r["batch"], r["n"]) == (H, B, N)
        for k in ("s_per_epoch", "samples_per_s", "compute_floor_s", "memory_floor_s", "frac_floor", "loss"):
            assert _positive(r[k]), (r["mode"], k, r[k])
        assert math.isfinite(r["compile_s"]) and r["compile_s"] >= 0
        assert r["samples_per_s"] == pytest.approx(N / r["s_per_epoch"])
        assert r["s_per_epoch"] == np.median(r["epoch_s"]) and r["spread"] == 0.0   # one timed epoch
        assert r["floor_s"] == max(r["compute_floor_s"], r["memory_floor_s"])
        assert r["bound"] == ("compute" if r["compute_floor_s"] >= r["memory_floor_s"] else "memory")
        assert r["frac_floor"] == r["floor_s"] / r["s_per_epoch"]
        assert r["compute_floor_s"] == pytest.approx(r["flops_per_epoch"] / (report["peak_gflops"] * 1e9))
        assert r["in_dim"] == 1024   # the mission's grayscale inputs
        assert r["inputs"] == (modes.IMAGES if r["mode"] in bench.JAX_MODES and r["mode"] != "scan_features"
                               else modes.FEATURES)
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
    assert ratios["scan_manual_vs_scan_features"] == pytest.approx(t["scan_features"] / t["scan_manual"])
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
    # The same training on features normalised beforehand: equal up to the float32
    # rounding of normalising on the host instead of in the step.
    feat = m["scan_features"]
    np.testing.assert_allclose(feat.step_losses, ref.step_losses, rtol=1e-4, atol=1e-6)
    _assert_params(feat.params, ref.params, atol=1e-5)


def test_the_bench_trains_with_the_settings_train_builds():
    """The step the bench times is the one `svhn-jax train --preset mission --hidden H
    --batch B` compiles: step.settings' StepConfig (uint8 images normalised in the
    step, shifts) and Hyper from the same RunConfig."""
    data = bench.make_data(N, 0)
    c = bench.run_config(H, B, epochs=3)
    assert c == config.make("mission", hidden=(H,), batch=B, epochs=3)
    cfg, hp = bench.jax_setup(c, N, data.fitted)
    spe = train.steps_per_epoch(N, B)
    assert cfg == settings.step_config(c, spe, data.fitted)
    assert hp == settings.hyper(c)
    assert cfg.prep is not None and cfg.shift == 2 and cfg.image_shape == (32, 32, 1)
    assert (hp.lr, hp.reg) == (np.float32(3e-3), np.float32(3e-3))
    features, _ = bench.jax_setup(c, N, data.fitted, features=True)
    assert features == cfg._replace(prep=None)
    assert data.images.dtype == np.uint8 and data.images.shape == (N, 3072)
    assert data.features.dtype == np.float32 and data.features.shape == (N, 1024)


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


def test_byte_model_against_a_hand_count():
    """Dense(4 -> 3) - ReLU - Dense(3 -> 10): W1 12 + b1 3 + W2 30 + b2 10 = 55 parameters.
    Adam moves each parameter 8 times a step (read and write of the parameter, its
    gradient, m and v), 4 bytes each: 55 * 8 * 4 = 1760 bytes; SGD only 4 times: 880.
    A batch of 5 rows of 12 bytes, each with an int32 label and an int32 index: 5 * 20 = 100."""
    spec = model.make_spec((3,))
    assert roofline.param_count(spec, 4) == 55
    assert roofline.state_bytes(55, "adam") == 1760
    assert roofline.state_bytes(55, "sgd") == 880
    assert roofline.state_bytes(55, "momentum") == 1320
    assert roofline.batch_bytes(5, 12) == 100
    # with BatchNorm: Dense(4 -> 3, no bias) 12 + gamma 3 + beta 3 + Dense(3 -> 10) 40 = 58
    assert roofline.param_count(model.make_spec((3,), batchnorm="before"), 4) == 58


def test_floors_arithmetic():
    """An epoch of 10 steps: 2e9 FLOPs at 100 GFLOP/s is 0.02 s; 10 * (1e6 B at 50 GB/s
    + 1e5 B at 10 GB/s) = 10 * (2e-5 + 1e-5) = 3e-4 s, so the compute floor bounds it."""
    f = roofline.floors(flops=2e9, steps=10, state=1_000_000, batch=100_000, peak_gflops=100.0,
                        state_gbs=50.0, stream_gbs=10.0)
    assert f["compute_floor_s"] == pytest.approx(0.02)
    assert f["memory_floor_s"] == pytest.approx(3e-4)
    assert (f["floor_s"], f["bound"]) == (f["compute_floor_s"], "compute")
    assert f["bytes_per_epoch"] == 11_000_000
    g = roofline.floors(flops=2e6, steps=10, state=1_000_000, batch=100_000, peak_gflops=100.0,
                        state_gbs=50.0, stream_gbs=10.0)
    assert (g["floor_s"], g["bound"]) == (g["memory_floor_s"], "memory")
    r = modes.add_floors({"flops_per_epoch": 2e9, "steps_per_epoch": 10, "state_bytes": 1_000_000,
                          "batch_bytes": 100_000, "s_per_epoch": 0.04}, 100.0, 50.0, 10.0)
    assert r["frac_floor"] == pytest.approx(0.5)
    assert modes.spread([1.0, 3.0, 2.0]) == 1.0 and modes.spread([2.0, 2.0]) == 0.0


def test_modes_are_timed_interleaved_in_alternating_order():
    """Every mode is warmed up first; then each round times one epoch of every mode,
    first to last, then last to first; each mode's done() gets its own epochs' times."""
    calls = []

    def runner(name):
        epochs = iter([1.0, 2.0, 3.0])
        return modes.Runner(warm=lambda: calls.append(("warm", name)) or 0.5,
                            epoch=lambda: calls.append(("epoch", name)) or next(epochs),
                            done=lambda times, compile_s, load: (times, compile_s, load["wall_s"] >= 0))

    out = modes.measure({"a": runner("a"), "b": runner("b"), "c": runner("c")}, epochs=3)
    assert calls == [("warm", "a"), ("warm", "b"), ("warm", "c"),
                     ("epoch", "a"), ("epoch", "b"), ("epoch", "c"),
                     ("epoch", "c"), ("epoch", "b"), ("epoch", "a"),
                     ("epoch", "a"), ("epoch", "b"), ("epoch", "c")]
    assert out == {m: ([1.0, 2.0, 3.0], 0.5, True) for m in "abc"}


def test_loads_of_several_windows_combine_by_wall_time():
    windows = [{"other_busy_cores": 1.0, "steal_cores": 0.0, "wall_s": 3.0},
               {"other_busy_cores": 0.0, "steal_cores": 0.4, "wall_s": 1.0}]
    c = machine.combine_loads(windows)
    assert (c["other_busy_cores"], c["steal_cores"], c["wall_s"]) == (0.75, 0.1, 4.0)
    assert c["busy"] is True   # 0.75 cores > BUSY_THRESHOLD_CORES
    quiet = machine.combine_loads([{"other_busy_cores": 0.1, "steal_cores": 0.0, "wall_s": 2.0}])
    assert quiet["busy"] is False
    unknown = machine.combine_loads(windows + [{"other_busy_cores": None, "steal_cores": None, "wall_s": 1.0}])
    assert unknown["other_busy_cores"] is None and unknown["busy"] is None


def test_bandwidth_positive_finite():
    assert _positive(machine.bandwidth_gbs(1e5, repeats=2, moved=1e7))


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

"""TensorBoard events, read back with TensorBoard's own reader (no TensorFlow, no server).

Scalars are stored as float32, so a value read back must equal the written one
rounded to float32, exactly.
"""

import csv
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from svhn_jax import cli, config
from svhn_jax.run import folder as runfolder, launch as runs, tblog
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model
from fake_svhn import synthetic_npz


def read(logdir):
    ea = event_accumulator.EventAccumulator(str(logdir), size_guidance={
        "scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea, tag):
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def f32(x):
    return float(np.float32(x))


def history(rng, epochs, steps_per_epoch, first_epoch=1):
    return [{"epoch": e, "step": e * steps_per_epoch, "train_loss": rng.uniform(0.5, 2),
             "train_acc": rng.uniform(), "val_loss": rng.uniform(0.5, 2), "val_acc": rng.uniform(),
             "lr": rng.uniform(1e-4, 1e-2), "seconds": rng.uniform(0.05, 0.1),
             "images_per_s": rng.uniform(1e4, 1e5)}
            for e in range(first_epoch, first_epoch + epochs)]


def test_epoch_scalars_equal_history_csv(tmp_path):
    rows = history(np.random.default_rng(0), epochs=4, steps_per_epoch=88)
    runfolder.write_csv(tmp_path / "history.csv", rows)
    w = tblog.open_writer(tmp_path / "tb")
    for row in rows:
        tblog.log_epoch(w, row)
    tblog.close(w)
    with open(tmp_path / "history.csv") as f:
        csv_rows = list(csv.DictReader(f))
    ea = read(tmp_path / "tb")
    assert set(ea.Tags()["scalars"]) == set(tblog.EPOCH_TAGS.values())
    for key, tag in tblog.EPOCH_TAGS.items():
        assert scalars(ea, tag) == [(int(r["step"]), f32(r[key])) for r in csv_rows], tag


def test_gradcheck_records_as_scalars(tmp_path):
    records = [{"step": s, "epoch": 1, "directional_fd": 10.0 ** -(s + 6),
                "manual_vs_autodiff": 1e-16 * s, "smooth": s != 2} for s in range(5)]
    w = tblog.open_writer(tmp_path)
    tblog.log_gradchecks(w, records)
    tblog.close(w)
    ea = read(tmp_path)
    assert scalars(ea, "gradcheck/directional_fd") == [(r["step"], f32(r["directional_fd"])) for r in records]
    assert scalars(ea, "gradcheck/manual_vs_autodiff") == [(r["step"], f32(r["manual_vs_autodiff"])) for r in records]
    assert scalars(ea, "gradcheck/smooth") == [(0, 1.0), (1, 1.0), (2, 0.0), (3, 1.0), (4, 1.0)]
    assert not any(tag.startswith("gradcheck/epoch") for tag in ea.Tags()["scalars"])   # an axis


def test_layer_histograms_and_gradient_norms(tmp_path):
    spec = model.make_spec([6], batchnorm="before")   # dense(no bias), batchnorm, relu, dense
    rng = np.random.default_rng(1)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    params = ({"W": normal(5, 6)}, {"gamma": 1 + normal(6), "beta": normal(6)}, {},
              {"W": normal(6, 10), "b": np.zeros(10, np.float32)})   # a constant leaf too
    grads = ({"W": normal(5, 6)}, {"gamma": normal(6), "beta": normal(6)}, {},
             {"W": normal(6, 10), "b": normal(10)})
    grads[1]["gamma"][2] = np.nan      # non-finite entries are left out, not fatal
    w = tblog.open_writer(tmp_path)
    tblog.log_layers(w, 7, spec, params, grads)
    tblog.log_layers(w, 9, spec, params)       # weights only
    tblog.close(w)
    ea = read(tmp_path)
    names = ["0.dense.W", "1.batchnorm.beta", "1.batchnorm.gamma", "3.dense.W", "3.dense.b"]
    leaves = lambda t: [t[0]["W"], t[1]["beta"], t[1]["gamma"], t[3]["W"], t[3]["b"]]
    total = 0.0
    for name, p, g in zip(names, leaves(params), leaves(grads)):
        for tag, values, steps in ((f"weights/{name}", p, [7, 9]), (f"gradients/{name}", g, [7])):
            events = ea.Histograms(tag)
            assert [e.step for e in events] == steps
            h = events[0].histogram_value
            v = np.asarray(values, np.float64).ravel()
            v = v[np.isfinite(v)]
            assert (h.num, h.min, h.max) == (v.size, v.min(), v.max())
            assert h.sum == pytest.approx(v.sum(), rel=1e-12, abs=1e-12)
            assert h.sum_squares == pytest.approx(v @ v, rel=1e-12)
            # bucket i holds the values in [limit[i-1], limit[i]) (the last also its limit), as TF
            limits = np.asarray(h.bucket_limit)
            edges = np.concatenate([[limits[0] - (limits[1] - limits[0])], limits])
            idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(limits) - 1)
            assert np.array_equal(np.bincount(idx, minlength=len(limits)), h.bucket), tag
        gv = np.asarray(g, np.float64)[np.isfinite(g)]
        total += gv @ gv
        assert scalars(ea, f"grad_norm/{name}") == [(7, f32(np.sqrt(gv @ gv)))]
    assert scalars(ea, "grad_norm/total") == [(7, f32(np.sqrt(total)))]


def test_resume_shows_every_step_once(tmp_path):
    """The checkpoint is at step 20, the end of epoch 2; the run went on to step 30
    (epoch 3, checks at 20 and 25) and was killed. Resumed at 20, it redoes the
    check at 20 and epoch 3, then goes on: every step shows once, the redone
    ones with their new values, epoch 2's row (not redone) with its old one."""
    rng = np.random.default_rng(2)
    first, second = history(rng, 3, 10), history(rng, 2, 10, first_epoch=3)
    check = lambda steps, err: [{"step": s, "directional_fd": err, "manual_vs_autodiff": err,
                                 "smooth": True} for s in steps]
    w = tblog.open_writer(tmp_path)
    for row in first:
        tblog.log_epoch(w, row)
    tblog.log_gradchecks(w, check((5, 15, 20, 25), 1.0))
    tblog.close(w)
    w = tblog.open_writer(tmp_path, start_step=20, history=first[:2])   # within the same second
    tblog.log_gradchecks(w, check((20, 25, 35), 0.5))
    for row in second:
        tblog.log_epoch(w, row)
    tblog.close(w)
    ea = read(tmp_path)
    for key, tag in tblog.EPOCH_TAGS.items():
        assert scalars(ea, tag) == [(r["step"], f32(r[key])) for r in first[:2] + second], tag
    assert scalars(ea, "gradcheck/directional_fd") == [(5, 1.0), (15, 1.0), (20, 0.5), (25, 0.5), (35, 0.5)]


def test_fresh_run_hides_older_events_in_its_folder(tmp_path):
    w = tblog.open_writer(tmp_path)
    tblog.log_epoch(w, {"step": 10, "val_loss": 9.0})
    tblog.close(w)
    w = tblog.open_writer(tmp_path)                  # --overwrite: start_step 0
    tblog.log_epoch(w, {"step": 5, "val_loss": 1.0})
    tblog.close(w)
    assert scalars(read(tmp_path), "loss/val") == [(5, 1.0)]


def test_images_from_png_figure_and_array(tmp_path):
    fig = Figure(figsize=(2, 1), dpi=50)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = tmp_path / "confusion.png"
    fig.savefig(png, format="png")
    rgb = np.random.default_rng(3).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    w = tblog.open_writer(tmp_path / "tb")
    tblog.log_image(w, "images/confusion", png, 30)
    tblog.log_image(w, "images/figure", fig, 30)
    tblog.log_image(w, "images/rgb", rgb, 30)
    gif = tmp_path / "x.png"
    gif.write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(SvhnJaxError, match="not a PNG"):
        tblog.log_image(w, "images/bad", gif, 30)
    with pytest.raises(SvhnJaxError, match="uint8"):
        tblog.log_image(w, "images/bad", rgb.astype(np.float32), 30)
    tblog.close(w)
    ea = read(tmp_path / "tb")
    stored = ea.Images("images/confusion")[0]
    assert stored.step == 30 and stored.encoded_image_string == png.read_bytes()
    assert (stored.width, stored.height) == (100, 50)
    assert (ea.Images("images/figure")[0].width, ea.Images("images/figure")[0].height) == (100, 50)
    back = np.asarray(Image.open(io.BytesIO(ea.Images("images/rgb")[0].encoded_image_string)))
    assert np.array_equal(back, rgb)


def test_settings_as_markdown_table(tmp_path):
    config = {"lr": 0.003, "hidden": [128], "optimizer": "adam", "note": "a|b",
              "preprocessing": {"mean": list(range(1024))}}
    w = tblog.open_writer(tmp_path)
    tblog.log_settings(w, config)
    tblog.close(w)
    text = read(tmp_path).Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    lines = text.splitlines()
    assert lines[:2] == ["| setting | value |", "| --- | --- |"]
    assert lines[2:6] == ["| lr | 0.003 |", "| hidden | [128] |", '| optimizer | "adam" |',
                          '| note | "a\\|b" |']
    assert lines[6].startswith("| preprocessing | (dict, ") and "see config.json" in lines[6]


def test_disabled_writer_writes_nothing(tmp_path):
    w = tblog.open_writer(tmp_path / "tb", enabled=False)
    assert w is None
    tblog.log_epoch(w, {"step": 1, "val_loss": 1.0})
    tblog.log_gradchecks(w, [{"step": 1}])
    tblog.log_layers(w, 1, (), ())
    tblog.log_image(w, "x", "missing.png", 1)
    tblog.log_settings(w, {})
    tblog.close(w)
    assert not (tmp_path / "tb").exists()


def test_unwritable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SvhnJaxError, match="--no-tensorboard"):
        tblog.open_writer(tmp_path / "file" / "tb")


# --------------------------------------------------------------------- sweeps


def sweep_results():
    rng = np.random.default_rng(4)
    results = []
    for i, (lr, opt, hidden) in enumerate([(1e-3, "adam", [128]), (1e-2, "adam", [128]),
                                           (1e-3, "momentum", [512, 256]), (1.0, "momentum", [512, 256])]):
        config = {"lr": lr, "reg": 0.0, "optimizer": opt, "hidden": hidden, "batchnorm": "none",
                  "batch": 64, "schedule": "constant", "epochs": 3, "seed": 0,
                  "grayscale": True, "data": "synthetic", "shift": i % 2}
        hist = history(rng, 3 if lr < 1 else 1, 88)
        results.append({"config": config, "history": hist, "status": "completed" if lr < 1 else "diverged",
                        "best_val_acc": max(r["val_acc"] for r in hist),
                        "final_val_acc": hist[-1]["val_acc"], "final_val_loss": hist[-1]["val_loss"]})
    results.append({"config": dict(config, lr=3.0), "history": [], "status": "diverged",
                    "best_val_acc": -1.0, "final_val_acc": float("nan"), "final_val_loss": float("nan")})
    return results


def test_sweep_sessions_in_hparams_plugin(tmp_path):
    results = sweep_results()
    folders = tblog.log_sweep(tmp_path / "tb", results)
    assert [f.name for f in folders] == [
        "000-lr=0.001,optimizer=adam,hidden=128,shift=0", "001-lr=0.01,optimizer=adam,hidden=128,shift=1",
        "002-lr=0.001,optimizer=momentum,hidden=512x256,shift=0",
        "003-lr=1,optimizer=momentum,hidden=512x256,shift=1", "004-lr=3,optimizer=momentum,hidden=512x256,shift=1"]
    for folder, r in zip(folders, results):
        ea = read(folder)
        content = ea.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]).session_start_info
        c = r["config"]
        hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        # every SWEEP_HPARAMS setting plus the one other setting that varies (shift)
        assert hp == {"lr": c["lr"], "reg": 0.0, "optimizer": c["optimizer"],
                      "hidden": "x".join(map(str, c["hidden"])), "batchnorm": "none", "batch": 64.0,
                      "schedule": "constant", "epochs": 3.0, "seed": 0.0, "shift": float(c["shift"])}
        end = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_end_info"]).session_end_info
        diverged = r["status"] == "diverged"
        assert end.status == (api_pb2.STATUS_FAILURE if diverged else api_pb2.STATUS_SUCCESS)
        last = r["history"][-1]["step"] if r["history"] else 0
        for key in ("best_val_acc", "final_val_acc", "final_val_loss"):
            expected = [(last, f32(r[key]))] if np.isfinite(r[key]) else []   # NaN: no value
            assert (scalars(ea, f"metrics/{key}") if expected else
                    [t for t in ea.Tags()["scalars"] if t == f"metrics/{key}"]) == expected
        assert scalars(ea, "metrics/diverged") == [(last, float(diverged))]
        curve = scalars(ea, "accuracy/val") if r["history"] else []
        assert curve == [(h["step"], f32(h["val_acc"])) for h in r["history"]]
        assert ("accuracy/val" in ea.Tags()["scalars"]) == bool(r["history"])


def test_sweep_hparams_chosen_explicitly(tmp_path):
    results = sweep_results()[:2]
    folder, _ = tblog.log_sweep(tmp_path, results, hparams=["lr", "grayscale"])
    content = read(folder).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams.keys() == {"lr", "grayscale"}
    assert start.hparams["grayscale"].bool_value is True and start.hparams["lr"].number_value == 1e-3
    assert folder.name == "000-lr=0.001"


def test_writing_never_imports_tensorflow(tmp_path):
    """Writing events (run and sweep) never even tries to import TensorFlow.
    (TensorBoard's reader does try, and falls back to its own stub without it.)"""
    code = textwrap.dedent(f"""
        import sys
        tried = []
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    tried.append(name)
        sys.meta_path.insert(0, Spy())
        import numpy as np
        from svhn_jax.run import tblog
        w = tblog.open_writer({str(tmp_path / 'run')!r})
        tblog.log_epoch(w, {{"step": 1, "val_loss": 1.0}})
        tblog.log_image(w, "img", np.zeros((2, 2, 3), np.uint8), 1)
        tblog.log_settings(w, {{"lr": 1}})
        tblog.close(w)
        tblog.log_sweep({str(tmp_path / 'sweep')!r}, [{{"config": {{"lr": 1.0}}, "history": [],
            "status": "completed", "best_val_acc": 0.5, "final_val_acc": 0.5, "final_val_loss": 1.0}}])
        assert "tensorboardX" in sys.modules
        print(repr(tried))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------- runs and sweeps, end to end


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return synthetic_npz(tmp_path_factory.mktemp("data"), 800)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_writes_history_and_checks_as_events(tmp_path, npz):
    c = config.make(data=str(npz), hidden=[8], epochs=3, batch=40, gradcheck_every=6,
                    histogram_every=2)
    runs.train_run(c, tmp_path / "r", quiet=True)
    ea = read(tmp_path / "r" / "tb")
    hist = _rows(tmp_path / "r" / "history.csv")
    for key, tag in tblog.EPOCH_TAGS.items():
        assert scalars(ea, tag) == [(int(r["step"]), f32(r[key])) for r in hist], tag
    # every column of gradchecks.csv, whatever the check records, is a scalar at its step
    # (but the axes: step, and epoch, which the epoch scalar above maps)
    checks = _rows(tmp_path / "r" / "gradchecks.csv")
    columns = [k for k in checks[0] if k not in ("step", "epoch", "mode")]
    assert {"manual_vs_autodiff", "directional_jvp", "directional_fd", "smooth", "passed",
            "training_precision_error", "training_precision_bound"} <= set(columns)
    as_float = lambda v: {"True": 1.0, "False": 0.0}[v] if v in ("True", "False") else f32(v)
    for mode, prefix in (("train", "gradcheck/"), ("eval", "gradcheck_eval/")):
        rows = [r for r in checks if r["mode"] == mode]
        assert len(rows) == {"train": 3 * 3, "eval": 3}[mode]   # steps 0, 6, 12 of each epoch; each end
        for col in columns:
            assert tblog.gradcheck_tag(col, mode) == prefix + col
            assert scalars(ea, prefix + col) == [(int(r["step"]), as_float(r[col])) for r in rows], (mode, col)
    assert [e.step for e in ea.Histograms("weights/0.dense.W")] == [int(hist[1]["step"])]
    assert [e.step for e in ea.Histograms("gradients/2.dense.b")] == [int(hist[1]["step"])]
    assert [s for s, v in scalars(ea, "grad_norm/total") if v > 0] == [int(hist[1]["step"])]
    assert {"images/confusion", "images/misclassified"} <= set(ea.Tags()["images"])
    assert "settings/text_summary" in ea.Tags()["tensors"]


def test_a_resumed_run_shows_every_step_once(tmp_path, npz):
    c = config.make(data=str(npz), hidden=[8], epochs=3, batch=40, checkpoint_every=5)
    with pytest.raises(runs.Interrupted):
        runs.train_run(c, tmp_path / "r", quiet=True, stop_after_steps=23)   # mid epoch 2
    runs.resume_run(tmp_path / "r", quiet=True)
    runs.train_run(c.replace(checkpoint_every=0), tmp_path / "ref", quiet=True)
    ea, ref = read(tmp_path / "r" / "tb"), read(tmp_path / "ref" / "tb")
    for tag in tblog.EPOCH_TAGS.values():
        steps = [s for s, _ in scalars(ea, tag)]
        assert steps == sorted(set(steps)) == [s for s, _ in scalars(ref, tag)], tag
    assert scalars(ea, "loss/val") == scalars(ref, "loss/val")


def test_sweep_sessions_match_results_csv(tmp_path, npz):
    assert cli.main(["sweep", "--data", str(npz), "--out", str(tmp_path / "s"), "--hidden", "8",
                     "--epochs", "2", "--batch", "40", "--lr", "1e-3,1e-2", "--optimizer", "sgd,adam",
                     "--no-final", "--json"]) == 0
    results = _rows(tmp_path / "s" / "results.csv")
    sessions = sorted((tmp_path / "s" / "tb").iterdir())
    assert len(sessions) == len(results) == 4
    for folder, r in zip(sessions, results):       # both in rank order
        content = read(folder).PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["lr"].number_value == float(r["lr"])
        assert start.hparams["optimizer"].string_value == r["optimizer"]
        assert scalars(read(folder), "metrics/best_val_acc")[0][1] == f32(r["best_val_acc"])

"""Tests for svhn_jax.plots.

Every function must write a PNG that matplotlib can read back, for ordinary
inputs and for the awkward ones training produces (diverged epochs, exact-zero
errors, nothing misclassified, one epoch, no records). Writes must be atomic
(no temp files left behind, an old file survives a failed render) and the
module must never touch pyplot's global state.
"""

import math
import os
import subprocess
import sys
import textwrap

import matplotlib.image
import numpy as np
import pytest

from matplotlib.figure import Figure

from svhn_jax import plots
from svhn_jax.errors import SvhnJaxError
from svhn_jax.plots import base, training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN, INF = math.nan, math.inf


@pytest.fixture(autouse=True)
def low_dpi(monkeypatch):
    """Render at 60 dpi: a third of the pixels keeps the file fast; the code paths are
    the same (the subprocess test below renders at the real DPI)."""
    monkeypatch.setattr(base, "DPI", 60)


def assert_png(path, min_side=150):
    """`path` is a non-empty PNG that matplotlib reads back as an RGB(A) image."""
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min(img.shape[:2]) >= min_side and max(img.shape[:2]) <= 4000
    # not a blank canvas: something was drawn
    assert img[..., :3].std() > 0.01


def assert_no_temp_files(directory):
    leftovers = [p.name for p in directory.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def make_history(n, diverge_at=None):
    """n epochs of plausible numbers; from `diverge_at` on, losses are NaN/inf."""
    hist = []
    for e in range(1, n + 1):
        rec = {"epoch": e, "train_loss": 2.3 * math.exp(-e / 5) + 0.3,
               "val_loss": 2.3 * math.exp(-e / 5) + 0.4, "train_acc": 0.9 - 0.7 * math.exp(-e / 4),
               "val_acc": 0.85 - 0.65 * math.exp(-e / 4), "lr": 1e-3 * 0.9 ** e}
        if diverge_at is not None and e >= diverge_at:
            rec.update(train_loss=INF, val_loss=NAN, train_acc=0.1, val_acc=NAN)
        hist.append(rec)
    return hist


# ---------------------------------------------------------------- curves


@pytest.mark.parametrize("history", [
    make_history(12),
    make_history(1),                          # a single epoch: points, not invisible lines
    make_history(8, diverge_at=5),            # diverged tail
    [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "val_loss": None, "lr": "n/a"},
     {"train_acc": 0.5, "val_acc": 0.4}],     # missing keys, junk values, no epoch
    [dict(r, val_acc=NAN, lr=1e-3) for r in make_history(3)],  # no best epoch; constant lr
], ids=["normal", "single-epoch", "diverged", "missing-keys", "nan-acc-const-lr"])
def test_curves_writes_two_pngs(tmp_path, history):
    out = plots.curves(history, tmp_path / "loss.png", tmp_path / "acc.png")
    assert out == (tmp_path / "loss.png", tmp_path / "acc.png")
    for p in out:
        assert_png(p)
    assert_no_temp_files(tmp_path)


def test_curves_empty_history_still_writes(tmp_path):
    loss, acc = plots.curves([], tmp_path / "l.png", tmp_path / "a.png")
    assert_png(loss)
    assert_png(acc)


def test_creates_parent_dirs_and_overwrites(tmp_path):
    target = tmp_path / "a" / "b" / "loss.png"
    plots.curves([], target, tmp_path / "a" / "acc.png")
    first = target.read_bytes()
    plots.gradcheck([], target)
    assert target.read_bytes() != first
    assert_png(target)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["acc.png", "b"]


def test_percent_and_best_epoch():
    # fractions become percent; values already in percent are left alone
    np.testing.assert_allclose(base.percent(np.array([0.5, NAN])), [50.0, NAN])
    np.testing.assert_allclose(base.percent(np.array([50.0, 80.0])), [50.0, 80.0])
    assert training._best_epoch(np.array([1.0, 2.0, 3.0]), np.array([10.0, NAN, 30.0])) == (3.0, 30.0)
    assert training._best_epoch(np.array([1.0]), np.array([NAN])) is None


# ---------------------------------------------------------------- gradient checks


def _run_rows():
    """Rows of gradchecks.csv as a run writes them: 40 checks, every tenth finite
    difference across a kink (large, set aside), one failed step (hand vs jax.grad)."""
    from svhn_jax.nn import stepcheck

    n = 40
    fd = np.where(np.arange(n) % 10 == 3, 3.5e-4, 1e-7 * (1 + np.arange(n) % 7))
    checks = stepcheck.StepCheck(checked=np.ones(n, bool), step=np.arange(n) * 20,
                                 manual_vs_autodiff=np.where(np.arange(n) == 25, 0.2, 1e-7),
                                 directional_jvp=np.full(n, 2e-7), directional_fd=fd,
                                 smooth=np.arange(n) % 10 != 3, training_precision_error=np.zeros(n),
                                 training_precision_bound=np.zeros(n))
    return stepcheck.records(checks, epoch=1)


@pytest.mark.parametrize("records", [
    [{"step": s, "directional_fd": 10.0 ** (-7 - s % 3), "manual_vs_autodiff": 0.0 if s % 2 else 3e-15}
     for s in range(0, 200, 10)],
    [{"step": 0, "directional_fd": 0.0, "manual_vs_autodiff": 0.0}],    # all zeros
    [{"step": 0, "directional_fd": NAN, "manual_vs_autodiff": 1e-12},
     {"step": 5, "manual_vs_autodiff": 2e-12}],                          # NaN and missing
    _run_rows(),                                                         # a run's rows
    [],
], ids=["normal", "zeros", "nan-missing", "run", "empty"])
def test_gradcheck(tmp_path, records):
    out = plots.gradcheck(records, tmp_path / "gc.png", tol_fd=1e-6, tol_autodiff=1e-10)
    assert out == tmp_path / "gc.png"
    assert_png(out)


def test_gradcheck_figure_agrees_with_the_csv_and_the_summary(tmp_path):
    import csv

    from svhn_jax.nn import stepcheck

    rows = _run_rows()
    with open(tmp_path / "gradchecks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    read_back = list(csv.DictReader(open(tmp_path / "gradchecks.csv")))
    tol = stepcheck.tolerance()
    fig, shown = plots.gradcheck_figure(read_back, tol_fd=tol, tol_autodiff=tol)
    expected = stepcheck.summary(rows)
    assert shown == {"checks": 40, "set_aside": 4, "failed": 1,
                     "max": {"manual_vs_autodiff": expected["gradcheck_max_manual_vs_autodiff"],
                             "directional_jvp": expected["gradcheck_max_directional_jvp"],
                             "directional_fd": expected["gradcheck_max_directional_fd"]}}
    assert shown["max"]["directional_fd"] == 7e-7            # not the set-aside 3.5e-4
    assert expected["gradchecks_failed"] == 1 and expected["gradchecks_nonsmooth"] == 4
    title = fig.axes[0].get_title()
    assert "40 checks, 1 failed, 4 set aside" in title
    assert "along v: vs finite difference: max 7.0e-07 over smooth checks" in title
    assert "hand vs jax.grad, every entry: max 2.0e-01" in title and "3.5e-04" not in title
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    fd_line = lines["along v: vs finite difference"]
    set_aside = lines[plots.checks.SET_ASIDE]
    np.testing.assert_array_equal(set_aside.get_xdata(), [60, 260, 460, 660])
    np.testing.assert_allclose(set_aside.get_ydata(), 3.5e-4)
    assert len(fd_line.get_xdata()) == 36 and max(fd_line.get_ydata()) == 7e-7
    assert "not smooth along v" in plots.checks.SET_ASIDE and "set aside" in plots.checks.SET_ASIDE
    assert lines[f"tolerance {tol:.1e} (every series)"].get_ydata()[0] == tol
    assert_png(plots.gradcheck(read_back, tmp_path / "gradchecks.png", tol_fd=tol, tol_autodiff=tol))


def test_gradcheck_figure_marks_non_finite_errors_as_failures():
    rows = [{"step": 0, "manual_vs_autodiff": NAN, "directional_fd": 1e-7, "smooth": True},
            {"step": 1, "manual_vs_autodiff": 1e-7, "directional_fd": INF, "smooth": "True"},
            {"step": 2, "manual_vs_autodiff": 1e-7, "directional_fd": INF, "smooth": "False"}]
    fig, shown = plots.gradcheck_figure(rows, tol_fd=1e-5, tol_autodiff=1e-5)
    assert shown == {"checks": 3, "set_aside": 1, "failed": 2,
                     "max": {"manual_vs_autodiff": 1e-7, "directional_fd": 1e-7}}
    marks = [l for l in fig.axes[0].get_lines() if l.get_label().startswith("NaN / inf")]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [0, 1]


def test_gradcheck_figure_of_thousands_of_checks_draws_each_epochs_largest_error():
    """A run checked at every step: 10 epochs of 500 checks. Each series shows one point
    per epoch, at the step of its largest error, so a failure stays in sight; a
    short run is drawn check by check."""
    rng = np.random.default_rng(0)
    n, per_epoch = 5000, 500
    jvp = 10.0 ** rng.uniform(-8, -6, n)
    jvp[1234] = 3e-3                                  # one failure, in epoch 3
    rows = [{"step": i, "epoch": 1 + i // per_epoch, "manual_vs_autodiff": 1e-7,
             "directional_jvp": jvp[i], "directional_fd": 1e-7, "smooth": i % 1000 != 7}
            for i in range(n)]
    fig, shown = plots.gradcheck_figure(rows, tol_fd=1e-5, tol_autodiff=1e-5)
    assert shown["failed"] == 1 and shown["max"]["directional_jvp"] == 3e-3
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    line = lines["along v: vs jax.jvp" + plots.checks.THINNED]
    worst = [int(np.argmax(jvp[e * per_epoch:(e + 1) * per_epoch])) + e * per_epoch for e in range(10)]
    np.testing.assert_array_equal(line.get_xdata(), worst)
    np.testing.assert_array_equal(line.get_ydata(), jvp[worst])
    assert 3e-3 in line.get_ydata()
    aside = lines[plots.checks.SET_ASIDE]               # 5 set aside: few, each drawn
    np.testing.assert_array_equal(aside.get_xdata(), [7, 1007, 2007, 3007, 4007])
    fig, _ = plots.gradcheck_figure(rows[:300], tol_fd=1e-5, tol_autodiff=1e-5)
    short = {l.get_label(): l for l in fig.axes[0].get_lines()}["along v: vs jax.jvp"]
    assert len(short.get_xdata()) == 300


def test_loss_figure_draws_a_schedule_on_a_linear_axis_named_in_the_legend(tmp_path, monkeypatch):
    """A cosine schedule ends near 0: on a log axis its last epochs would span decades."""
    figures = []
    monkeypatch.setattr(base, "save", lambda fig, path: figures.append(fig) or path)
    history = make_history(40)
    for r in history:
        r["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * r["epoch"] / 40))    # 0 at the end
    plots.curves(history, tmp_path / "loss.png", tmp_path / "acc.png")
    loss = figures[0]
    ax, lr_ax = loss.axes
    assert lr_ax.get_yscale() == "linear" and lr_ax.get_ylim()[0] == 0.0
    assert lr_ax.get_ylim()[1] >= max(r["lr"] for r in history)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "learning rate (right axis)" in labels and "train" in labels and "val" in labels
    assert len(figures[1].axes) == 1                  # no learning rate on the accuracy figure


def test_for_log_clips_zeros_to_the_floor():
    y, clipped = base.for_log(np.array([0.0, 1e-20, 1e-8, NAN]))
    np.testing.assert_array_equal(clipped, [True, True, False, False])
    np.testing.assert_allclose(y[:3], [base.LOG_FLOOR, base.LOG_FLOOR, 1e-8])
    assert np.isnan(y[3])


@pytest.mark.parametrize("records, tol", [
    ([{"step": s, "manual_vs_autodiff": 0.0 if s % 3 == 0 else 1e-7, "max_abs_diff": 1e-8}
      for s in range(50)], 1e-5),
    ([{"step": 1, "manual_vs_autodiff": 2e-7}], None),      # no max_abs_diff
    ([], None),
], ids=["with-abs", "rel-only", "empty"])
def test_step_diffs(tmp_path, records, tol):
    assert_png(plots.step_diffs(records, tmp_path / "s.png", tol=tol))


# ---------------------------------------------------------------- classification


def test_confusion(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.integers(0, 20, (10, 10))
    m[np.diag_indices(10)] += 500
    m[3] = 0  # a class with no examples must not divide by zero
    assert_png(plots.confusion(m, tmp_path / "cm.png"))
    assert_png(plots.confusion(m[:3, :3], tmp_path / "cm3.png", class_names=["a", "b", "c"]))
    assert_png(plots.confusion(np.zeros((2, 2), int), tmp_path / "empty.png"))
    assert_png(plots.confusion(rng.integers(0, 9, (25, 25)), tmp_path / "big.png"))  # no counts


@pytest.mark.parametrize("matrix, names", [
    (np.zeros((3, 4), int), None), (np.zeros(3, int), None), (np.zeros((3, 3), int), ["a", "b"]),
])
def test_confusion_rejects_bad_shapes(tmp_path, matrix, names):
    with pytest.raises(SvhnJaxError):
        plots.confusion(matrix, tmp_path / "x.png", class_names=names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape, dtype", [
    ((7, 32, 32, 3), np.uint8), ((5, 32, 32, 1), np.uint8), ((4, 32, 32), np.uint8),
    ((6, 32, 32, 3), np.float32),  # standardised inputs: rescaled per image
])
def test_misclassified(tmp_path, shape, dtype):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, shape).astype(dtype)
    if dtype == np.float32:
        images = (images - 128.0) / 64.0
    n = shape[0]
    out = plots.misclassified(images, rng.integers(0, 10, n), rng.integers(0, 10, n),
                              tmp_path / "mis.png")
    assert_png(out)


def test_misclassified_none_and_many(tmp_path):
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    assert_png(plots.misclassified(empty, [], [], tmp_path / "none.png"))
    many = np.full((100, 32, 32, 3), 200, np.uint8)
    many[:, 8:24, 12:20] = 30
    out = plots.misclassified(many, np.zeros(100, int), np.ones(100, int), tmp_path / "many.png",
                              max_images=9)
    assert_png(out)


def test_misclassified_real_digits(tmp_path, svhn_8k):
    X, y = svhn_8k
    pred = (y[:20] + 1) % 10
    assert_png(plots.misclassified(X[:20], y[:20], pred, tmp_path / "real.png"))


@pytest.mark.parametrize("images, n_true, n_pred", [
    (np.zeros((3, 32, 32, 3), np.uint8), 2, 3),
    (np.zeros((3, 32, 32, 2), np.uint8), 3, 3),
    (np.zeros((3, 3072), np.uint8), 3, 3),
])
def test_misclassified_rejects_bad_inputs(tmp_path, images, n_true, n_pred):
    with pytest.raises(SvhnJaxError):
        plots.misclassified(images, np.zeros(n_true, int), np.zeros(n_pred, int), tmp_path / "x.png")


# ---------------------------------------------------------------- learning rates


def sweep_results():
    out = []
    for label in ("sgd, bn=off", "adam, bn=on", "adam, bn=off"):
        for lr in (1e-4, 1e-3, 1e-2, 1e-1):
            bad = label.startswith("adam") and lr >= 1e-1
            out.append({"label": label, "lr": lr, "val_loss": NAN if bad else 1.0 + lr,
                        "val_acc": 0.1 if bad else 0.8 - lr})
    out.append({"label": "sgd, bn=off", "lr": 3e-1, "val_loss": 2.0, "val_acc": 0.2, "diverged": True})
    return out


@pytest.mark.parametrize("results", [
    sweep_results(),
    [{"lr": 1e-3, "val_loss": 1.0, "val_acc": 0.7}],                 # one point, no label
    [{"lr": 1e-2, "val_loss": INF, "val_acc": 0.1}],                 # only a diverged config
    [{"label": f"cfg {i}", "lr": 10.0 ** -k, "val_loss": 1.0 + k / 10, "val_acc": 0.5 + k / 20}
     for i in range(9) for k in range(1, 4)],                        # legend outside
    [],
    [{"lr": 0.0, "val_loss": 1.0, "val_acc": 0.5}],                  # lr 0 cannot go on log x
], ids=["normal", "single", "only-diverged", "many-labels", "empty", "zero-lr"])
def test_lr_sweep(tmp_path, results):
    assert_png(plots.lr_sweep(results, tmp_path / "sweep.png"))


def test_lr_sweep_one_metric(tmp_path):
    assert_png(plots.lr_sweep(sweep_results(), tmp_path / "acc.png", metric_keys=("val_acc",)))


def test_diverged():
    assert training._diverged({"val_loss": NAN})
    assert training._diverged({"val_loss": INF})
    assert training._diverged({"val_loss": 1.0, "diverged": True})
    assert not training._diverged({"val_loss": 1.0})
    assert not training._diverged({"val_acc": 0.5})  # no loss recorded is not divergence


def test_lr_find(tmp_path):
    lrs = np.logspace(-6, 0, 80)
    losses = 2.3 - 0.8 / (1 + np.exp(-3 * (np.log10(lrs) + 3.5))) + np.exp(5 * (np.log10(lrs) + 0.8))
    assert_png(plots.lr_find(lrs, losses, tmp_path / "a.png", suggestion=3e-3))
    losses[-6:] = NAN
    assert_png(plots.lr_find(lrs, losses, tmp_path / "b.png"))
    assert_png(plots.lr_find(lrs[:1], losses[:1], tmp_path / "c.png"))           # one step
    assert_png(plots.lr_find(lrs, np.linspace(1, 5, 80), tmp_path / "d.png"))    # never improves
    assert_png(plots.lr_find(lrs, np.full(80, NAN), tmp_path / "e.png"))         # nothing finite
    with pytest.raises(SvhnJaxError):
        plots.lr_find(lrs, losses[:-1], tmp_path / "f.png")


def test_ema_is_bias_corrected():
    # a constant input must come out constant from the first step on
    np.testing.assert_allclose(training._ema(np.full(5, 2.0), 0.9), np.full(5, 2.0))
    x = np.array([1.0, 3.0])
    np.testing.assert_allclose(training._ema(x, 0.5), [1.0, (0.25 * 1 + 0.5 * 3) / 0.75])


# ---------------------------------------------------------------- comparisons and grids


@pytest.mark.parametrize("n_runs", [1, 3, 12, 32])
def test_overlay_curves(tmp_path, n_runs, recwarn):
    runs = [{"label": f"lr={10.0 ** -(i / 3):.1e} optimizer=momentum batchnorm=before",
             "history": make_history(6, diverge_at=4 if i == 0 else None)} for i in range(n_runs)]
    runs.append({"label": "crashed before epoch 1", "history": []})
    assert_png(plots.overlay_curves(runs, tmp_path / "o.png"))
    # 32 runs (the README's sweep: 8 lr x 2 optimizers x 2 BatchNorm) still leave room to draw
    assert not [w for w in recwarn if "constrained_layout not applied" in str(w.message)]


def test_overlay_curves_empty(tmp_path):
    assert_png(plots.overlay_curves([], tmp_path / "o.png"))


def test_heatmap(tmp_path):
    v = np.array([[0.80, 0.85, NAN], [0.70, INF, 0.90]])
    out = plots.heatmap(v, ["1e-4", "1e-3", "1e-2"], ["0", "1e-4"], tmp_path / "h.png",
                        title="val accuracy", xlabel="learning rate", ylabel="weight decay")
    assert_png(out)
    all_nan = plots.heatmap(np.full((1, 2), NAN), [1, 2], ["a"], tmp_path / "n.png",
                            title="t", xlabel="x", ylabel="y")
    assert_png(all_nan)
    with pytest.raises(SvhnJaxError):
        plots.heatmap(v.T, ["a", "b", "c"], ["d", "e"], tmp_path / "bad.png",
                      title="t", xlabel="x", ylabel="y")


# ---------------------------------------------------------------- atomic writes, no globals


def test_failed_render_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "gc.png"
    plots.gradcheck([], target)
    before = target.read_bytes()

    def half_written(self, f, **kw):
        f.write(PNG_MAGIC + b"truncated")
        raise KeyboardInterrupt  # what a kill mid-render looks like to the writer

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(KeyboardInterrupt):
        plots.gradcheck([{"step": 1, "directional_fd": 1e-8, "manual_vs_autodiff": 0.0}], target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["gc.png"]


def test_written_file_is_world_readable(tmp_path):
    out = plots.heatmap(np.ones((1, 1)), ["a"], ["b"], tmp_path / "h.png",
                        title="t", xlabel="x", ylabel="y")
    assert os.stat(out).st_mode & 0o777 == 0o644


def test_no_pyplot_anywhere():
    """A fresh interpreter runs every function without ever importing pyplot."""
    code = textwrap.dedent("""
        import sys, tempfile, pathlib
        import numpy as np
        from svhn_jax import plots
        d = pathlib.Path(tempfile.mkdtemp())
        h = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": .5, "val_acc": .4, "lr": .1}]
        plots.curves(h, d / "l.png", d / "a.png")
        plots.overlay_curves([{"label": "a", "history": h}], d / "o.png")
        plots.gradcheck([{"step": 0, "directional_fd": 1e-8, "manual_vs_autodiff": 0.0}], d / "g.png")
        plots.step_diffs([{"step": 0, "manual_vs_autodiff": 1e-7}], d / "s.png")
        plots.confusion(np.eye(3, dtype=int), d / "c.png")
        plots.misclassified(np.zeros((1, 32, 32, 3), np.uint8), [1], [2], d / "m.png")
        plots.lr_sweep([{"lr": 1e-3, "val_loss": 1.0, "val_acc": .5}], d / "w.png")
        plots.lr_find([1e-3, 1e-2], [2.0, 1.5], d / "f.png", suggestion=1e-3)
        plots.heatmap(np.ones((1, 1)), ["a"], ["b"], d / "h.png", title="t", xlabel="x", ylabel="y")
        assert len(list(d.iterdir())) == 10, list(d.iterdir())
        assert "matplotlib.pyplot" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_pyplot_figures_left_open():
    # runs last in this file: if anything imported pyplot, no figure stayed registered
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []

"""Ensembles (`train --ensemble K`): one compiled program trains the K seeds, each
member is the single run with its seed, the averaged probabilities are what is
scored and what `evaluate` reports, an interrupted ensemble resumes, and the
`models` mesh axis spreads ensemble members and sweep configurations over 2 and 4
devices with the one-device results."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from svhn_jax.run import checkpoint, evaluate, parts as rundata, folder as runfolder, launch as runs
from svhn_jax import cli, config, plots
from svhn_jax.step import evaluate as evaluation, parallel, settings as stepconfig, train
from svhn_jax.data import preprocess
from svhn_jax.errors import SvhnJaxError
from svhn_jax.nn import model

# Validation and test of equal size (100 images): one compiled evaluation serves both.
SETTINGS = dict(data="synthetic", synthetic_n=500, val_fraction=0.2, test_fraction=0.2,
                hidden=(16,), batchnorm="before", shift=2, batch=32, epochs=2, tensorboard=False)
K = 3
# Parameters (and BatchNorm statistics) of a member vs the single run with its seed, and
# of a run on 2 or 4 devices vs one device: max |a - b| / max |b| per leaf, after 2
# epochs. Measured on CPU: members equal single runs bit for bit; 2, 4 and 8 devices
# differ from one by at most 2.0e-7 (float32 sums taken in another order). 1e-5 leaves
# a 50x margin; a member trained with another seed or data order is off by order 1. A
# GPU multiplies float32 with reduced precision by default (as in tests/test_tune.py).
TOL = 1e-5 if jax.default_backend() == "cpu" else 2e-3


def _state(run):
    """The final train state in a run folder's checkpoint (members stacked if an ensemble)."""
    c, derived = runfolder.read_run(run)
    cfg = stepconfig.step_config(c, train.steps_per_epoch(derived["n_train"], c.batch))
    dim = preprocess.input_dim(derived["preprocessing"])
    make = lambda: runs.initial_states(runs.member_configs(c), cfg, dim, c.ensemble > 1)
    return checkpoint.load(run / "checkpoint.npz", jax.eval_shape(lambda: {"state": make()}))[0]["state"]


def _rel(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _member(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


@pytest.fixture(scope="module")
def device_jobs(tmp_path_factory):
    """The runs on 2 and 4 devices (_SCRIPT), started first: they compile and train in
    their own processes while the tests below run. {N: (K, process, run folder)}"""
    root = tmp_path_factory.mktemp("devices")
    settings = json.dumps(dict(SETTINGS, hidden=list(SETTINGS["hidden"])))
    jobs = {}
    for n, k in ((2, 3), (4, 4)):
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n), JAX_PLATFORMS="cpu")
        jobs[n] = (k, subprocess.Popen([sys.executable, "-c", _SCRIPT, settings, str(k),
                                        str(root / str(n))], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE), root / str(n))
    yield jobs
    for _, job, _ in jobs.values():
        if job.poll() is None:
            job.kill()
            job.communicate()


@pytest.fixture(scope="module")
def ens(tmp_path_factory, device_jobs):
    """An ensemble run of K seeds; the number of times the training step was traced."""
    out = tmp_path_factory.mktemp("ens") / "run"
    traces = []
    step, segment = train.train_step, parallel.run_segment

    def stacked_only(*a, **k):
        if not k["place"].stacked:
            raise AssertionError("an ensemble must not train its members one at a time")
        return segment(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_step", lambda *a, **k: traces.append(1) or step(*a, **k))
        mp.setattr(parallel, "run_segment", stacked_only)
        segment.clear_cache()
        metrics = runs.train_run(config.make(**{**SETTINGS, "tensorboard": True}, ensemble=K), out,
                                 quiet=True)
    return out, metrics, len(traces)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """The single runs with the members' seeds."""
    root = tmp_path_factory.mktemp("singles")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("curves", "confusion", "misclassified"):   # not under test here
            mp.setattr(plots, name, lambda *a, **k: None)
        for seed in range(K):
            runs.train_run(config.make(**SETTINGS, seed=seed), root / str(seed), quiet=True)
    return [root / str(seed) for seed in range(K)]


def test_one_program_trains_every_member_as_its_single_run(ens, singles):
    out, metrics, traces = ens
    assert traces == 1           # one compiled program for every member and epoch
    assert metrics["status"] == "completed" and metrics["seeds"] == [0, 1, 2]
    assert metrics["devices"] == 1
    assert len(metrics["member_val_acc"]) == len(metrics["member_test_acc"]) == K
    stacked = _state(out)
    assert stacked.params[0]["W"].shape[0] == K
    for i, run in enumerate(singles):
        alone = _state(run)
        assert _rel(_member(stacked.params, i), alone.params) <= TOL
        assert _rel(_member(stacked.bn_state, i), alone.bn_state) <= TOL
    other = _state(singles[1])   # the comparison can fail: another seed is far away
    assert _rel(_member(stacked.params, 0), other.params) > 0.1


def test_evaluate_scores_the_averaged_probabilities(ens, capsys):
    """evaluate (and the run's own test score) equal a NumPy average of the members'
    softmax outputs, computed member by member from the best parameters."""
    out, metrics, _ = ens
    c, derived = runfolder.read_run(out)
    X, y = rundata.load_split(c)["test"]
    x = preprocess.apply(X, derived["preprocessing"])
    spec = model.make_spec(c.hidden, batchnorm=c.batchnorm)
    best = runs.load_best(out, c, spec, x.shape[1])
    probs = []
    for i in range(K):
        logits = np.asarray(model.forward(_member(best["params"], i), _member(best["bn_state"], i),
                                          x, spec, train=False)[0], np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
    avg = np.mean(probs, axis=0)
    acc, nll = np.mean(avg.argmax(axis=1) == y), -np.mean(np.log(avg[np.arange(len(y)), y]))
    members = [np.mean(p.argmax(axis=1) == y) for p in probs]

    r = evaluate.evaluate_run(out)
    assert (r["split"], r["n"], r["overlap_with_training"]) == ("test", len(y), 0)
    assert r["accuracy"] == pytest.approx(acc, abs=1e-6) and r["loss"] == pytest.approx(nll, rel=1e-5)
    assert r["member_accuracy"] == pytest.approx(members, abs=1e-6)
    assert metrics["test_acc"] == r["accuracy"] and metrics["test_loss"] == pytest.approx(nll, rel=1e-5)
    # averaging probabilities is not averaging losses: the reference tells them apart
    assert nll < np.mean([-np.mean(np.log(p[np.arange(len(y)), y])) for p in probs]) - 1e-3

    assert cli.main(["evaluate", "--run", str(out), "--split", "train", "--json"]) == 0
    t = json.loads(capsys.readouterr().out, parse_constant=lambda s: pytest.fail(s))
    assert t["split"] == "train" and t["n"] == metrics["n_train"] == t["overlap_with_training"]
    assert t["ensemble"] == K
    assert cli.main(["evaluate", "--run", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {acc:.2%}" in text and "(synthetic, split test; 0 seen in training)" in text
    assert "members alone: " + "  ".join(f"{a:.2%}" for a in members) in text


def test_an_interrupted_ensemble_resumes_to_the_same_parameters(ens, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(runs.Interrupted, match="--resume"):
        runs.train_run(config.make(**SETTINGS, ensemble=K), out, quiet=True, stop_after_steps=1)
    assert runfolder.read_metrics(out)["status"] == "interrupted"
    m = runs.resume_run(out, quiet=True)
    assert m["status"] == "completed" and m["params_sha256"] == ens[1]["params_sha256"]
    assert [int(r["epoch"]) for r in csv.DictReader((out / "history.csv").open())] == [1, 2]


def test_a_diverged_member_stops_the_ensemble_and_is_named(tmp_path, monkeypatch):
    real = parallel.run_segment

    def nan_in_member_1(*a, **k):
        states, (ce, correct) = real(*a, **k)
        return states, (ce.at[1, 3].set(np.nan), correct)

    monkeypatch.setattr(parallel, "run_segment", nan_in_member_1)
    with pytest.raises(runs.Diverged, match=r"member 1 \(seed 1\) diverged at step 4"):
        runs.train_run(config.make(**SETTINGS, ensemble=K), tmp_path / "d", quiet=True)
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert (m["status"], m["diverged_member"], m["diverged_at_step"], m["epochs_run"]) == \
        ("diverged", 1, 4, 0)


def test_ensemble_settings_that_cannot_take_effect_are_refused(tmp_path, capsys):
    with pytest.raises(SvhnJaxError, match="beyond the largest seed"):
        config.make(ensemble=3, seed=config.SEED_MAX - 1)
    with pytest.raises(SvhnJaxError, match="--profile"):
        runs.train_run(config.make(**SETTINGS, ensemble=2), tmp_path / "p", profile=tmp_path / "t")
    assert not (tmp_path / "p").exists()
    assert cli.main(["train", "--data", "synthetic", "--ensemble", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--ensemble must be >= 1" in capsys.readouterr().err


# Run with N CPU devices: an ensemble (K=3 on 2 devices needs a padding slot; K=4 on 4
# devices fills them) and a sweep group of the members' K configurations (the same
# compiled program). Records how many models each device holds after every call of
# run_steps_many, and the collectives in its compiled program.
_SCRIPT = """
import json, re, sys
import jax
from svhn_jax import config, plots
from svhn_jax.step import mesh as meshes, parallel
from svhn_jax.run import parts as rundata, launch as runs
from svhn_jax.tune import sweep as tune
per_device, programs, real = [], [], parallel.run_segment
def spy(*a, **k):
    if not programs:   # the compiled program, before the call donates its state
        programs.append(real.lower(*a, **k).compile().as_text())
    out = real(*a, **k)
    per_device.append(sorted(x.data.shape[0] for x in out[0].params[0]["W"].addressable_shards))
    return out
parallel.run_segment = spy
for name in ("curves", "confusion", "misclassified"):   # figures are not under test here
    setattr(plots, name, lambda *a, **k: None)
settings, k, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
COLLECTIVES = "all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute"
c = config.make(**settings, ensemble=k)
runs.train_run(c, out, quiet=True)
ensemble_per_device, per_device[:] = list(per_device), []
parts = rundata.load_split(c)
parts.pop("test")
group = tune.train_group([c.replace(ensemble=1, seed=s) for s in range(k)], parts)
print(json.dumps({"devices": jax.device_count(), "ensemble_per_device": ensemble_per_device,
                  "sweep_per_device": per_device,
                  "collectives": len(re.findall(COLLECTIVES, programs[0])),
                  "placements": [[p.k, p.padded] for p in
                                 (meshes.placement(n, "all", batch=32, stacked=True) for n in (3, 5))],
                  "sweep_val_loss": [[h["val_loss"] for h in r["history"]] for r in group]}))
"""


def test_models_axis_spreads_members_and_sweeps_over_devices(device_jobs, ens, singles):
    one_device = _state(ens[0])
    single_val_loss = [[float(r["val_loss"]) for r in csv.DictReader((s / "history.csv").open())]
                       for s in singles]
    first = lambda t: jax.tree.map(lambda a: a[:K], t)
    for n, (k, job, out) in device_jobs.items():
        stdout, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr[-3000:]
        r = json.loads(stdout.strip().splitlines()[-1])
        assert r["devices"] == n
        # every compiled epoch left the stacked models spread over all N devices, 2 (3
        # models and a padding slot on 2 devices) or 1 (4 on 4) on each
        assert r["ensemble_per_device"] == r["sweep_per_device"] == [[4 // n] * n] * SETTINGS["epochs"]
        assert r["collectives"] == 0   # no device waits for another while training
        # (models asked for, slots trained) for 3 and 5 models: as few devices as the
        # rounds allow, padding up to a multiple of them
        assert r["placements"] == ([[3, 4], [5, 6]] if n == 2 else [[3, 3], [5, 6]])
        state = _state(out)
        assert state.params[0]["W"].shape[0] == k     # padding slots are not saved
        assert _rel(first(state.params), one_device.params) <= TOL
        assert _rel(first(state.bn_state), one_device.bn_state) <= TOL
        assert np.allclose(r["sweep_val_loss"][:K], single_val_loss, rtol=TOL, atol=0)


def test_members_are_hparams_sessions_in_tensorboard(ens):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out, metrics, _ = ens
    sessions = sorted((out / "tb" / "members").iterdir())
    assert len(sessions) == K
    for i, folder in enumerate(sessions):
        ea = EventAccumulator(str(folder))
        ea.Reload()
        start = plugin_data_pb2.HParamsPluginData.FromString(
            ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["seed"].number_value == i
        acc = ea.Scalars("metrics/best_val_acc")[0].value
        assert acc == pytest.approx(metrics["member_val_acc"][i], abs=1e-6)

"""The README's Python API example runs as written; its published accuracies are tied to
the commands that produced them and say what reproduces where; its 8k-slice recipe
rebuilds the project's slice bit for bit. (tests/test_readme_commands.py runs every
command line.)"""

import re
import runpy
import statistics
from pathlib import Path

import numpy as np
import scipy.io

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_python_api_example_runs_and_scores_held_out_images(capsys):
    section = _section(README.read_text(), "Python API")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    fit, held_out, acc = scope["fit"], scope["held_out"], scope["acc"]
    assert len(fit) == 2000 and len(held_out) == 500 and not set(fit) & set(held_out)
    assert scope["pred"].shape == (500,) and 0.3 < acc <= 1.0   # the 500 held out; it learned
    assert capsys.readouterr().out == f"held-out accuracy {acc:.1%} on 500 images\n"


# ---------------------------------------------------------------- accuracies

ROW = re.compile(r"^\| (\d+) \| ([\d.]+)% \| ([\d.]+)% \| `([0-9a-f]{12})` \|$")
MEAN = re.compile(r"^\| mean ± std of (\d+) \| ([\d.]+)% ± ([\d.]+) \| ([\d.]+)% ± ([\d.]+) \| \|$")


def seed_tables(text: str) -> dict:
    """{preset: (seeds asked for, rows [(seed, val %, test %, hash prefix)], mean row)} of
    every `python scripts/seeds.py` command in a bash block and the table right after it."""
    tables = {}
    for preset, first, last, table in re.findall(
            r"```bash\npython scripts/seeds\.py [^\n]*--preset (\w+) --seeds (\d+)-(\d+)[^\n]*\n```"
            r"\n\n((?:\|[^\n]*\n)+)", text):
        lines = table.strip().splitlines()
        rows = [ROW.match(line) for line in lines[2:-1]]
        assert all(rows), f"a row of the {preset} seed table is not a seed's: {lines}"
        mean = MEAN.match(lines[-1])
        assert mean, f"the {preset} seed table does not end with its mean: {lines[-1]}"
        tables[preset] = (list(range(int(first), int(last) + 1)),
                          [(int(r[1]), float(r[2]), float(r[3]), r[4]) for r in rows],
                          [float(v) for v in mean.groups()])
    return tables


def test_published_accuracies_are_means_over_seeds_consistent_with_their_rows():
    """Each preset's seed table follows the command that made it, lists exactly the seeds
    that command asks for, and its mean and standard deviation are those of its rows
    (which are rounded to 0.01 points: the bounds allow for that)."""
    tables = seed_tables(README.read_text())
    assert set(tables) == {"mission", "best"}
    assert len(tables["mission"][0]) >= 10 and len(tables["best"][0]) >= 5
    for preset, (seeds, rows, (n, val_mean, val_std, test_mean, test_std)) in tables.items():
        assert [r[0] for r in rows] == seeds and n == len(seeds), preset
        for col, mean, std in ((1, val_mean, val_std), (2, test_mean, test_std)):
            values = [r[col] for r in rows]
            assert abs(statistics.fmean(values) - mean) <= 0.006, (preset, col)
            assert abs(statistics.stdev(values) - std) <= 0.011, (preset, col)
            assert all(0 < v < 100 for v in values)


def test_single_runs_and_the_hash_are_seed_0_of_the_tables_and_this_machines():
    """The single-run table repeats seed 0 of each seed table (the same command), the
    mission hash is seed 0's, and the README says a hash holds on one machine only."""
    text = README.read_text()
    tables = seed_tables(text)
    for preset, (_, rows, _) in tables.items():
        seed0 = rows[0]
        single = re.search(rf"^\| `svhn-jax train --data \S+ --preset {preset} --out runs/{preset}` "
                           rf"\| ([\d.]+)% \| \*\*([\d.]+)%\*\* \|", text, re.M)
        assert single and (float(single[1]), float(single[2])) == seed0[1:3], preset
    hashes = set(re.findall(r"`([0-9a-f]{64})`", _section(text, "Measured numbers")))
    mission_hash = next(h for h in hashes if h.startswith(tables["mission"][1][0][3]))
    assert re.search(rf"On this machine the mission run's `params_sha256` is\s+`{mission_hash}`", text)
    said = " ".join(_section(text, "Measured numbers").split())
    assert "on one machine with one JAX/XLA build it repeats bit for bit" in said
    assert "The hashes in this section are this machine's" in said
    assert "compare the mean and spread over seeds, which carry over" in said


# ------------------------------------------------------------------ the slice


def test_make_slice_rebuilds_the_projects_slice_bit_for_bit(svhn_8k_path, tmp_path):
    """Written back into the official .mat layout (plus a few images more), the slice's
    own pixels and labels give, through the README's recipe, the very file the README
    names by its sha256."""
    published = re.search(r"its sha256 is\s+`([0-9a-f]{64})`", README.read_text())[1]
    with np.load(svhn_8k_path) as d:
        X, y = d["X"], d["y"]
    X = np.concatenate([X, X[:7]])
    y = np.concatenate([y, y[:7]])
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"),
                     {"X": np.moveaxis(X, 0, -1), "y": np.where(y == 0, 10, y).astype(np.uint8)[:, None]})
    make_slice = runpy.run_path(str(ROOT / "scripts" / "make_slice.py"))["make_slice"]
    digest = make_slice(tmp_path / "test_32x32.mat", tmp_path / "out" / "slice.npz")
    assert digest == published

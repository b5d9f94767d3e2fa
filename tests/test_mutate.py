"""scripts/mutate.py: the mutants it finds, the list of equivalent ones it reads, and
one mutant run end to end in a scratch copy of the tree (the README's sample run
takes up to 15 minutes: tests/test_readme_commands.py parses it, this runs one)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate)


def test_every_covered_module_has_mutants_and_every_listed_equivalent_is_one():
    mutants = mutate.find_mutants()
    ids = [m["id"] for m in mutants]
    assert len(set(ids)) == len(ids)
    assert {m["module"] for m in mutants} == set(mutate.TESTS)
    assert set(mutate.read_equivalent()) <= set(ids)   # a stale id would hide nothing: an error
    for m in mutants[::50]:
        source = (ROOT / mutate.PACKAGE / m["module"]).read_bytes()
        assert source[m["start"]:m["end"]].decode() == m["original"]


def test_a_mutant_is_killed_by_its_tests_and_the_scratch_file_restored(tmp_path):
    """RMSprop's update p - lr g / (sqrt(s) + eps) mutated to p + ...: tests/test_optim.py fails."""
    m, = [m for m in mutate.find_mutants() if m["module"] == "optim.py" and m["mutation"] == "`-` -> `+`"
          and "jnp.sqrt(s)" in m["source"]]
    tree = mutate._scratch(tmp_path)
    path = tree / mutate.PACKAGE / "optim.py"
    before = path.read_bytes()
    r = mutate.run_mutant(m, tree, tmp_path / "cache", timeout=600)
    assert r["status"] == "killed" and "test_optim.py" in r["killed_by"], r
    assert path.read_bytes() == before

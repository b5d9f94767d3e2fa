"""data.stratified_split: the parts are disjoint, cover every index, are sorted, hold
each class in proportion to their fraction (within one image), and depend on the seed
alone; checked on random labels and fractions with hypothesis, on the real slice's class
counts, and for the fractions it refuses (exit code 2).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svhn_jax import data
from svhn_jax.errors import SvhnJaxError

pytestmark = pytest.mark.usefixtures("offline")   # no test here reaches the network


# --------------------------------------------------------- stratified_split

def _check_split(y, fractions, parts):
    n = len(y)
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))  # disjoint, covering
    for f, p in zip(fractions, parts):
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
        for c in np.unique(y):
            n_c = int((y == c).sum())
            assert abs(int((y[p] == c).sum()) - n_c * f) < 1 + 1e-9


@st.composite
def _fractions(draw):
    w = draw(st.lists(st.integers(1, 20), min_size=1, max_size=4))
    return [x / sum(w) for x in w]


@settings(max_examples=150, deadline=None)
@given(y=st.lists(st.integers(0, 9), min_size=1, max_size=400),
       fractions=_fractions(), seed=st.integers(0, 2**32 - 1))
def test_stratified_split_properties(y, fractions, seed):
    y = np.asarray(y)
    try:
        parts = data.stratified_split(y, fractions, seed)
    except SvhnJaxError as e:
        # only legitimate when some part's share is below one image in every class
        assert "empty part" in str(e)
        assert len(y) * min(fractions) < len(np.unique(y))
        return
    _check_split(y, fractions, parts)
    again = data.stratified_split(y, fractions, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_stratified_split_seed_and_sizes():
    y = np.repeat(np.arange(10), [543, 1536, 1278, 889, 795, 732, 616, 605, 503, 503])
    a = data.stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    b = data.stratified_split(y, (0.8, 0.1, 0.1), seed=1)
    _check_split(y, (0.8, 0.1, 0.1), a)
    assert not np.array_equal(a[0], b[0])
    assert [len(p) for p in a] == pytest.approx([6400, 800, 800], abs=10)


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.2, -0.2), (0.0, 1.0), (), ("a",),
                                       (float("nan"), 1.0)])
def test_stratified_split_bad_fractions(fractions):
    with pytest.raises(SvhnJaxError, match="fraction") as e:
        data.stratified_split(np.arange(20) % 10, fractions, 0)
    assert e.value.exit_code == 2

"""Shared test fixtures.

The real SVHN slice lives outside the repository, in ../shared/data relative
to the project root; it is read-only there and never copied into the repo.
"""

from pathlib import Path

import numpy as np
import pytest

SVHN_8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "svhn_test_8k.npz"


@pytest.fixture(scope="session")
def svhn_8k():
    """(X uint8 (8000, 32, 32, 3), y int64 (8000,)) of real SVHN test digits."""
    if not SVHN_8K.exists():
        pytest.skip(f"real SVHN slice not found at {SVHN_8K}")
    with np.load(SVHN_8K) as d:
        return d["X"], d["y"]

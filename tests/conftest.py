"""Shared test fixtures.

The real SVHN slice lives outside the repository, in ../shared/data relative
to the project root; it is read-only there and never copied into the repo. A
user's clone has no ../shared: every test that needs the slice gets it through
the fixtures below, which skip when it is missing (tests/test_fresh_clone.py
checks that no test names its path any other way).
"""

import os
from pathlib import Path

# GPUs multiply float32 matrices with reduced precision by default (TF32: a 10-bit
# mantissa); TPUs with bfloat16 passes. Many tests compare float32 results with
# tolerances that assume full float32 products, as a CPU computes them. The whole
# suite, and every subprocess it starts, therefore runs with full-precision products:
# a no-op on a CPU. (Set here, before JAX is imported, so JAX reads it at start.)
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"

import socket  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_SVHN_8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "svhn_test_8k.npz"


@pytest.fixture
def no_internet(monkeypatch):
    """Fail any connection that is not to the loopback interface."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def svhn_8k_path() -> Path:
    """Path of the real 8k slice (8,000 SVHN test digits, an .npz with X and y)."""
    if not _SVHN_8K.exists():
        pytest.skip(f"real SVHN slice not found at {_SVHN_8K}")
    return _SVHN_8K


@pytest.fixture(scope="session")
def svhn_8k(svhn_8k_path):
    """(X uint8 (8000, 32, 32, 3), y int64 (8000,)) of real SVHN test digits."""
    with np.load(svhn_8k_path) as d:
        return d["X"], d["y"]

"""Shared test fixtures.

The real SVHN slice lives outside the repository, in ../shared/data relative
to the project root; it is read-only there and never copied into the repo. A
user's clone has no ../shared: every test that needs the slice gets it through
the fixtures below, which skip when it is missing (tests/test_layout.py
checks that no test names its path any other way).
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# GPUs multiply float32 matrices with reduced precision by default (TF32: a 10-bit
# mantissa); TPUs with bfloat16 passes. Many tests compare float32 results with
# tolerances that assume full float32 products, as a CPU computes them. The whole
# suite, and every subprocess it starts, therefore runs with full-precision products:
# a no-op on a CPU. (Set here, before JAX is imported, so JAX reads it at start.)
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"

# The suite and the subprocesses it starts compile many identical programs (the same
# tiny network trained in a new process, or through a new closure): compiled once, they
# are read back from a disk cache for this session (keyed by the program and the
# backend, so a changed program never hits an old entry). Compiling is most of the
# suite's time on a CPU.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="svhn_jax_tests_jit_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import socket  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_SVHN_8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "svhn_test_8k.npz"

# The fake SVHN files and their tfds preparation, shared by the data test files
# (test_data_*.py, test_download.py, test_split.py): a plugin, so that its session
# fixtures are built once per session, not once per file.
pytest_plugins = ["fake_svhn"]


# The files that take longest (most of their time in subprocesses of several devices or
# processes), heaviest first: with -n 2 each worker takes whole files in collection order
# (pyproject's --no-loadscope-reorder), so these start first and the many short files
# fill in around them, and both workers end together.
HEAVY_FIRST = ("test_processes.py", "test_compose.py", "test_readme_commands.py", "test_parallel.py",
               "test_parallel_runs.py", "test_stepcheck_precision.py", "test_reliability.py",
               "test_ensemble.py", "test_gradcheck_sweep.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: else as collected


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

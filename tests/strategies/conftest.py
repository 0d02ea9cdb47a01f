"""Make ``tests/helpers`` importable as ``helpers`` for this folder's tests."""

import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


import pytest  # noqa: E402


@pytest.fixture(params=["numpy", "numba"])
def kernel_path(request):
    """Run a test on the numpy reference kernels and on the numba accelerator."""
    from fedsilo.strategies import kernels

    previous = kernels.use_accelerator(request.param)
    yield request.param
    kernels.use_accelerator(previous)

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


@pytest.fixture(params=["numpy", "compiled"])
def kernel_path(request, monkeypatch) -> str:
    """Run a median/geometric-median test on the small-round numpy path and on the
    compiled one (generated median network, one-pass Weiszfeld steps)."""
    if request.param == "compiled":
        from fedsilo.strategies.aggregators import geometric_median, median

        monkeypatch.setattr(geometric_median, "FUSED_MIN_VALUES", 0)
        monkeypatch.setattr(median, "FUSED_MIN_VALUES", 0)
    return request.param

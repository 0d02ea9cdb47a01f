"""Shared test settings: no telemetry, no update checks, no Ray usage stats; the measured
start-up time that timeouts of the network tests scale with (`helpers.waiting`)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ[_key] = _value
# the split datasets are cached for this session only, never in the user's ~/.cache
# (every process the tests start inherits it)
_DATASET_CACHE = tempfile.mkdtemp(prefix="fedsilo-test-datasets-")
os.environ["FEDSILO_CACHE_DIR"] = _DATASET_CACHE

from helpers.waiting import Startup, measure_startup  # noqa: E402  (after the environment)

_MEASURED: list[Startup] = []


@pytest.fixture(scope="session")
def startup() -> Startup:
    """This machine's site start-up time, measured once per session (by the first test
    that asks: the others do not pay for it)."""
    measured = measure_startup()
    _MEASURED.append(measured)
    return measured


_FROM_WORKERS: list[str] = []
"""Start-up lines of pytest-xdist workers (``-n 2``), gathered by the controller."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove this session's dataset cache; in a pytest-xdist worker, hand this worker's
    start-up line to the controller."""
    shutil.rmtree(_DATASET_CACHE, ignore_errors=True)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fedsilo_startup"] = [m.describe() for m in _MEASURED]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error where xdist is absent
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist controller: collect a finished worker's start-up lines."""
    _FROM_WORKERS.extend(getattr(node, "workeroutput", {}).get("fedsilo_startup", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how loaded the machine was, so that slow network tests can be read in context."""
    for line in [m.describe() for m in _MEASURED] + _FROM_WORKERS:
        terminalreporter.write_line(f"start-up: {line}")

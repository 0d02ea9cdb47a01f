"""A real run for the governance tests: breast_cancer at 3 sites, 2 rounds, in-process engine."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from fedsilo.server.config import RunConfig
from fedsilo.simulations.runner import run_federation


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run's directory (never mutate it: copy it with ``tampered_run``)."""
    base = tmp_path_factory.mktemp("governance")
    run = run_federation(RunConfig.load(None, {
        "task": "breast_cancer", "sites": 3, "rounds": 2, "out": str(base), "run_id": "g"}),
        engine="inprocess")
    assert run.result.closing_reason == "completed"
    return run.run_dir


@pytest.fixture
def tampered_run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose round-1 record says one more site was accepted than signed."""
    target = tmp_path / "tampered"
    shutil.copytree(finished_run, target)
    with sqlite3.connect(target / "lineage.sqlite") as conn:
        (signed,) = conn.execute("SELECT signed FROM records WHERE seq = 1").fetchone()
        assert '"rounds_changed"' not in signed
        conn.execute("UPDATE records SET signed = ? WHERE seq = 1",
                     (signed.replace('"status":"completed"', '"status":"skipped"', 1),))
    return target

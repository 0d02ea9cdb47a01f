"""Shared fixtures for the lineage tests: small synthetic runs written with the real writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedsilo.lineage.synthetic import SyntheticRun, build_synthetic_run


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    """A finished run with every record type: genesis, site_join, round, resume, closing.

    4 genesis sites + a late joiner (round 2), 4 rounds, every 5th contribution rejected,
    site-001 refuses round 3, resume after round 3. Never mutate it: use ``run``.
    """
    return build_synthetic_run(
        tmp_path_factory.mktemp("pristine") / "run",
        rounds=4,
        sites=4,
        late_joiner=True,
        reject_every=5,
        refuse=(3, 1),
        resume_after=3,
    )


@pytest.fixture
def run(pristine_run: SyntheticRun, tmp_path: Path) -> SyntheticRun:
    """A private copy of the pristine run that a test may mutate."""
    target = tmp_path / "run"
    shutil.copytree(pristine_run.run_dir, target)
    return SyntheticRun(
        target,
        pristine_run.run_id,
        list(pristine_run.site_ids),
        list(pristine_run.model_digests),
        list(pristine_run.digests),
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the tamper suite's mutation classes and how many mutations of each were caught."""
    prefix = "test_lineage_tamper.py::test_mutation_detected["
    counts: dict[str, list[int]] = {}
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if prefix in nodeid and getattr(report, "when", "call") == "call":
                cls = nodeid.split(prefix, 1)[1].split(":", 1)[0]
                counts.setdefault(cls, [0, 0])[outcome == "failed"] += 1
    if not counts:
        return
    total = sum(ok for ok, _ in counts.values())
    missed = sum(bad for _, bad in counts.values())
    terminalreporter.write_sep("-", "lineage tamper suite")
    terminalreporter.write_line(
        f"{len(counts)} mutation classes, {total} mutations detected, {missed} undetected"
    )
    for cls, (ok, bad) in counts.items():
        terminalreporter.write_line(
            f"  {cls:<17} {ok:>4} detected" + (f", {bad} MISSED" if bad else "")
        )

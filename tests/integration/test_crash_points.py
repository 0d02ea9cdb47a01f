"""SIGKILL the server at every interruption point, resume, and get the uninterrupted run.

Each case runs ``fedsilo simulate`` (in-process engine: the same ServerApp and ClientApp,
no Ray) in a subprocess that ``FEDSILO_FAULT=<point>@<round>`` kills, then resumes it
with ``fedsilo simulate --resume`` and checks: the final model digest and every round's
model are the uninterrupted run's, ``lineage verify`` accepts the chain, and the summary
line, ``rounds.jsonl``, ``metrics.json``, ``report.html`` and ``lineage show`` cover the
whole run, each round once, with the interruption visible.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.server.config import RunConfig
from fedsilo.server.faults import POINTS
from fedsilo.server.outcome import exit_code
from fedsilo.simulations.runner import SimulationRun, run_federation

ROUNDS = 3
OPTS = {"sites": 4, "rounds": ROUNDS, "fraction": 0.75, "seed": 3}
ARGV = ["--sites", "4", "--rounds", str(ROUNDS), "--fraction", "0.75", "--seed", "3",
        "--engine", "inprocess", "--quiet"]
END_POINTS = ("before_model", "before_closing", "after_closing")  # once, after the last round
# per-round points crash round 2 (round 1's checkpoint exists); the end points the last round
CASES = [(p, ROUNDS if p in END_POINTS else 2) for p in POINTS]
# a crash before round 2's checkpoint resumes from round 1's; from the checkpoint on, from 2
BEFORE_CHECKPOINT = ("mid_round", "before_checkpoint")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> SimulationRun:
    out = tmp_path_factory.mktemp("ref")
    return run_federation(RunConfig.load(None, {**OPTS, "out": str(out), "run_id": "ref"}),
                          engine="inprocess")


def _killed_simulate(args: list[str], fault: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDSILO_FAULT": fault}
    proc = subprocess.Popen([sys.executable, "-m", "fedsilo.cli", "simulate", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _crash(tmp_path: Path, fault: str) -> Path:
    res = _killed_simulate([*ARGV, "--out", str(tmp_path), "--run-id", "crashy"], fault)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    run_dir = tmp_path / "crashy"
    assert not (run_dir / "report.html").exists()
    return run_dir


def test_every_fault_point_in_the_server_is_named_in_faults() -> None:
    """A new interruption point in the server gets a case here (CASES come from POINTS)."""
    import fedsilo.server as server_pkg

    used = set()
    for path in Path(server_pkg.__file__).parent.glob("*.py"):
        used |= set(re.findall(r"fault_point\(\"(\w+)\"", path.read_text()))
    assert used == set(POINTS)


@pytest.mark.parametrize(("point", "crash_round"), CASES, ids=[p for p, _ in CASES])
def test_sigkill_at_the_point_then_resume_gives_the_uninterrupted_run(
    point: str, crash_round: int, reference: SimulationRun, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = _crash(tmp_path, f"{point}@{crash_round}")
    if point == "after_closing":  # the state: chain closed, outputs missing
        assert lineage.read_chain(run_dir / "lineage.sqlite")[-1]["type"] == "closing"
        assert not (run_dir / "metrics.json").exists()

    code = main(["simulate", "--resume", str(run_dir), "--engine", "inprocess", "--quiet"])
    out, err = capsys.readouterr()
    assert code == exit_code(reference.result.closing_reason), err
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"fedsilo: run crashy {reference.result.closing_reason}: "
                           f"{ROUNDS} rounds ({reference.result.detail}")
    assert reference.final_digest in line

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final_model_digest"] == reference.final_digest
    assert metrics["closing_reason"] == reference.result.closing_reason
    assert metrics["closing_detail"] == reference.result.detail
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, ROUNDS + 1))
    assert [r["model_digest"] for r in metrics["rounds"]] == [r.model_digest for r in reference.rounds]
    logged = [json.loads(ln)["round"] for ln in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert logged == list(range(1, ROUNDS + 1))  # each round once

    report = lineage.verify_run(run_dir)
    assert report.ok, report.summary
    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    assert [r["body"]["round"] for r in chain if r["type"] == "round"] == list(range(1, ROUNDS + 1))
    assert chain[-1]["type"] == "closing" and [r["type"] for r in chain].count("closing") == 1
    ref_chain = lineage.read_chain(reference.run_dir / "lineage.sqlite")
    assert ([r["body"]["model_out"] for r in chain if r["type"] == "round"]
            == [r["body"]["model_out"] for r in ref_chain if r["type"] == "round"])

    html = (run_dir / "report.html").read_text()
    table = re.findall(r"<tr><td>(\d+)</td><td>(?:completed|skipped)</td>", html)
    assert table == [str(r) for r in range(1, ROUNDS + 1)]
    assert main(["lineage", "show", str(run_dir)]) == 0
    shown = capsys.readouterr().out.splitlines()
    resumes = [r for r in chain if r["type"] == "resume"]
    if point == "after_closing":
        # the chain was closed: nothing is run again, the outputs are finished from it
        assert resumes == [] and "resumed" not in line
    else:
        resumed_from = crash_round - 1 if point in BEFORE_CHECKPOINT else crash_round
        assert [r["body"]["from_round"] for r in resumes] == [resumed_from]
        assert f"resumed from round {resumed_from}" in line
        assert f"Interrupted and resumed 1 time(s), from the checkpoint of round(s) {resumed_from}" in html
        assert metrics["resumed_from"] == [resumed_from]
        assert any(f"resumed from the checkpoint of round {resumed_from} at " in s for s in shown)
    assert [s.split()[1] for s in shown[2:] if s.split()[1].isdigit()] == ["1", "2", "3"]


def test_closed_chain_without_model_is_finished_from_the_checkpoint(
    reference: SimulationRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's crash: closing record written, model.npz missing (the old order; or a
    lost file). Resume used to exit 1 with a traceback ("chain is closed") and verify
    failed ("model.npz is missing"); the final model survived only in the checkpoint."""
    run_dir = _crash(tmp_path, f"after_closing@{ROUNDS}")
    (run_dir / "model.npz").unlink()
    before = lineage.verify_run(run_dir)
    assert not before.ok and "model.npz is missing" in before.summary
    code = main(["simulate", "--resume", str(run_dir), "--engine", "inprocess", "--quiet"])
    out, err = capsys.readouterr()
    assert code == exit_code(reference.result.closing_reason) and "Traceback" not in err
    assert reference.final_digest in out
    with np.load(run_dir / "model.npz") as saved:
        assert lineage.arrays_digest(dict(saved)) == reference.final_digest
    assert lineage.verify_run(run_dir).ok

    # a finished run is refused in one line, exit 2
    code = main(["simulate", "--resume", str(run_dir), "--engine", "inprocess", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (f"fedsilo simulate: error: --resume: {run_dir} holds a finished run "
                   "(its report.html is written); nothing to resume\n")

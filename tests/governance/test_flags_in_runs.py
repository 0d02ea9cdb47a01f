"""Flags in real runs (issue 23, points 1, 3 and 4): the monitor on Flower's engine
(in-process), a free-riding site flagged, the policies acting on it, and `fedsilo monitor`
reading the flags back from the chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import run_cli

from fedsilo import lineage
from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.runner import run_federation
from fedsilo.simulations.scenario import malicious_sites

SITES, ROUNDS, SEED = 5, 3, 0
RIDER = malicious_sites(SITES, 1, SEED)[0]



def _run(base: Path, run_id: str, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    config = SimulationConfig.load(None, {
        "task": "breast_cancer", "sites": SITES, "rounds": ROUNDS, "seed": SEED,
        "out": str(base), "run_id": run_id, "allow_overreach": True, **options})
    run = run_federation(config, engine="inprocess")
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    return run, chain


def _flags(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for e in chain if e["type"] == "round" for f in e["body"]["extra"].get("flags", [])]


@pytest.fixture(scope="module")
def free_ride(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    return _run(tmp_path_factory.mktemp("flags"), "ride", attack="free_ride", malicious=1)


def test_free_rider_is_flagged_every_round_on_the_right_site(free_ride):
    run, chain = free_ride
    assert run.result.closing_reason == "completed"
    riders = [f for f in _flags(chain) if f["code"] == "free_rider"]
    assert [(f["round"], f["site"], f["severity"], f["action"]) for f in riders] == [
        (r, RIDER, "error", "none") for r in range(1, ROUNDS + 1)]
    assert riders[0]["evidence"]["norm"] == 0.0 and riders[0]["evidence"]["threshold"] == 0.001
    assert lineage.verify_run(run.run_dir).ok  # the flags are in the signed records


def test_monitor_lists_the_flags_and_fails_the_pipeline(free_ride):
    run, chain = free_ride
    n = len(_flags(chain))
    code, out, err = run_cli(["monitor", str(run.run_dir)])
    assert code == 1 and err == ""
    lines = out.splitlines()
    errors = sum(1 for f in _flags(chain) if f["severity"] == "error")
    assert lines[0] == f"run ride (completed, {ROUNDS} rounds): {n} flags, {errors} at or above error"
    assert sum(1 for line in lines if "free_rider" in line and RIDER in line) == ROUNDS
    code, out, _ = run_cli(["monitor", str(run.run_dir), "--json"])
    doc = json.loads(out)
    assert code == 1 and doc["state"] == "completed" and doc["flags"] == _flags(chain)


def test_exclude_site_leaves_the_free_rider_out(tmp_path: Path):
    run, chain = _run(tmp_path, "exclude", attack="free_ride", malicious=1,
                      monitor={"on_error": "exclude_site"})
    rounds = [e["body"] for e in chain if e["type"] == "round"]
    assert RIDER in rounds[0]["sampled"]
    assert all(RIDER not in b["sampled"] for b in rounds[1:])
    (flag,) = [f for f in _flags(chain) if f["code"] == "free_rider"]
    assert flag["action"] == "site excluded for the rest of the run"
    assert rounds[1]["extra"]["excluded"] == {RIDER: "free_rider"}


def test_stop_closes_the_run_naming_the_flag(tmp_path: Path):
    run, chain = _run(tmp_path, "stop", attack="free_ride", malicious=1,
                      monitor={"on_error": "stop"})
    closing = chain[-1]["body"]
    assert closing["reason"] == "stopped_by_monitor"
    assert closing["detail"].startswith(f"monitor flag free_rider (round 1, site {RIDER}); ")
    assert len([e for e in chain if e["type"] == "round"]) == 1
    assert lineage.verify_run(run.run_dir).ok
    code, _, _ = run_cli(["monitor", str(run.run_dir), "--fail-on", "warning"])
    assert code == 1


def test_clean_run_passes_the_gate(tmp_path: Path):
    run, chain = _run(tmp_path, "clean")
    flags = _flags(chain)
    # no update flag and no error in a clean run; a lagging site may be a (true) warning
    assert {f["code"] for f in flags} <= {"fairness_gap", "site_metric_drop"}
    code, out, _ = run_cli(["monitor", str(run.run_dir)])
    assert code == 0
    assert out.startswith(f"run clean (completed, {ROUNDS} rounds): {len(flags)} flags, "
                          "0 at or above error\n")


def test_bad_monitor_option_is_refused_before_anything_is_written(tmp_path: Path):
    code, _, err = run_cli(["simulate", "--config", str(_toml(tmp_path, "[monitor]\non_error = 'panic'\n")),
                         "--out", str(tmp_path / "runs"), "--engine", "inprocess"])
    assert code == 2
    assert err == ("fedsilo simulate: error: monitor.on_error: 'panic' is not a policy "
                   "(expected warn, exclude_site or stop)\n")
    assert not (tmp_path / "runs").exists()


def _toml(tmp: Path, text: str) -> Path:
    path = tmp / "run.toml"
    path.write_text(text)
    return path


def test_a_resumed_run_keeps_its_monitor_state_and_its_excluded_site(tmp_path: Path):
    """SIGKILL after round 2 of a run that excluded a free rider in round 1: the resumed
    run goes on with the checkpoint's monitor (the rider stays out) and ends where the
    uninterrupted run does."""
    import os
    import signal
    import subprocess
    import sys

    ref, ref_chain = _run(tmp_path, "whole", attack="free_ride", malicious=1,
                          monitor={"on_error": "exclude_site"})
    config = tmp_path / "run.toml"
    config.write_text(f'task = "breast_cancer"\nsites = {SITES}\nrounds = {ROUNDS}\n'
                      f'seed = {SEED}\nattack = "free_ride"\nmalicious = 1\n'
                      'allow_overreach = true\n[monitor]\non_error = "exclude_site"\n')
    run_dir = tmp_path / "crashy"
    for args, fault in ((["--config", str(config), "--out", str(tmp_path), "--run-id", "crashy"],
                         "after_round@2"), (["--resume", str(run_dir)], None)):
        env = {k: v for k, v in os.environ.items() if k != "FEDSILO_FAULT"}
        env.update({"FEDSILO_FAULT": fault} if fault else {})
        proc = subprocess.run([sys.executable, "-m", "fedsilo.cli", "simulate", "--quiet",
                               "--engine", "inprocess", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == (-signal.SIGKILL if fault else 0), proc.stderr[-2000:]
    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    rounds = [e["body"] for e in chain if e["type"] == "round"]
    assert all(RIDER not in b["sampled"] for b in rounds[1:])
    assert [b["extra"].get("excluded") for b in rounds] == \
        [e["body"]["extra"].get("excluded") for e in ref_chain if e["type"] == "round"]
    assert chain[-1]["body"]["final_model_digest"] == ref.final_digest
    assert lineage.verify_run(run_dir).ok

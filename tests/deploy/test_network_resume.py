"""Issue 7 point 4 on the deployment runtime: the ServerApp process is SIGKILLed mid-run
and the run is resumed with ``resume=true``; the chain verifies, with a resume record."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.waiting import Startup

from fedsilo.lineage import read_chain, verify_run

from .procs import (
    REPO,
    Procs,
    chain_types,
    env_for,
    flwr_json,
    start_insecure_federation,
    stop_dead_run,
    wait_for,
    wait_run_finished,
)

pytestmark = pytest.mark.network


def test_serverapp_killed_after_checkpoint_resumes_on_the_superlink(tmp_path: Path,
                                                                  startup: Startup) -> None:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = env_for(home)
    # The SuperLink starts the ServerApp process with its own environment: the fault
    # point SIGKILLs it after round 1's checkpoint, before round 1's lineage record.
    procs = Procs(tmp_path / "logs", {**env, "FEDSILO_FAULT": "before_lineage@1"})
    out = tmp_path / "runs"
    run_dir = out / "crash"
    app = str(REPO / "examples" / "flower-app")
    # every site answers every round: the timeout only bounds a failure, scaled to the load
    run_config = f"rounds=2 eval-every=0 round-timeout={startup.scaled(60):.0f} out='{out}' run-id='crash'"
    safety = startup.scaled(240)
    try:
        start_insecure_federation(tmp_path, procs, home, 3, name="t", startup=startup)
        first = flwr_json(env, "run", app, "t", "--run-config", run_config)
        wait_for(lambda: (run_dir / "checkpoint.npz").exists(), "round 1's checkpoint", safety)
        # the fault point kills the ServerApp before it can close the chain: once its
        # process is gone, the run is stopped in Flower (not left to Flower's heartbeat)
        link = next(p for p in procs.started if p.name == "superlink")
        stop_dead_run(env, "t", first["run-id"], link, safety)
        assert wait_run_finished(env, "t", first["run-id"], run_dir, safety).startswith("finished:")
        assert chain_types(run_dir) == ["genesis"]
        assert not (run_dir / "model.npz").exists()
        second = flwr_json(env, "run", app, "t", "--run-config", f"{run_config} resume=true")
        wait_run_finished(env, "t", second["run-id"], run_dir, safety)
    finally:
        procs.stop_all()

    chain = read_chain(run_dir / "lineage.sqlite")
    kinds = [r["type"] for r in chain]
    assert kinds == ["genesis", "round", "resume", "round", "closing"], kinds
    assert [r["body"]["from_round"] for r in chain if r["type"] == "resume"] == [1]
    assert chain[-1]["body"]["reason"] == "completed"
    report = verify_run(run_dir)
    assert report.ok, report.summary

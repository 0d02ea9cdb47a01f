"""Issue 7 point 4 on the deployment runtime: the ServerApp process is SIGKILLed mid-run
and the run is resumed with ``resume=true``; the chain verifies, with a resume record."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.lineage import read_chain, verify_run

from .procs import REPO, Procs, env_for, flwr_json, start_insecure_federation, wait_until

pytestmark = pytest.mark.network


def test_serverapp_killed_after_checkpoint_resumes_on_the_superlink(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = env_for(home)
    # The SuperLink starts the ServerApp process with its own environment: the fault
    # point SIGKILLs it after round 2's checkpoint, before round 2's lineage record.
    procs = Procs(tmp_path / "logs", {**env, "FEDSILO_FAULT": "before_lineage@2"})
    out = tmp_path / "runs"
    run_dir = out / "crash"
    app = str(REPO / "examples" / "flower-app")
    try:
        start_insecure_federation(tmp_path, procs, home, 3, name="t")
        first = flwr_json(env, "run", app, "t", "--run-config",
                          f"rounds=3 round-timeout=60.0 out='{out}' run-id='crash'")

        def crashed() -> bool:
            runs = flwr_json(env, "ls", "t", "--run-id", str(first["run-id"]))["runs"]
            return runs[0]["status"].startswith("finished")

        wait_until(lambda: (run_dir / "checkpoint.npz").exists(), 240, "round 1's checkpoint", poll=1.0)
        wait_until(crashed, 240, "Flower to see the ServerApp die", poll=2.0)
        assert not (run_dir / "model.npz").exists()
        flwr_json(env, "run", app, "t", "--run-config",
                  f"rounds=3 round-timeout=60.0 out='{out}' run-id='crash' resume=true")
        wait_until(lambda: (run_dir / "report.html").exists(), 240, "the resumed run to finish", poll=2.0)
    finally:
        procs.stop_all()

    chain = read_chain(run_dir / "lineage.sqlite")
    kinds = [r["type"] for r in chain]
    assert kinds == ["genesis", "round", "round", "resume", "round", "closing"], kinds
    assert [r["body"]["from_round"] for r in chain if r["type"] == "resume"] == [2]
    assert chain[-1]["body"]["reason"] == "rounds_done"
    report = verify_run(run_dir)
    assert report.ok, report.summary

"""Issue 2 point 6: the same ServerApp/ClientApp through Flower's deployment runtime.

A real ``flower-superlink`` (insecure, loopback) and three ``flower-supernode`` processes
with ``partition-id`` node configs; ``flwr run`` of ``examples/flower-app`` (plain Flower
CLI, runtime dependency installation off) for 2 rounds; the run directory's metrics and
lineage are checked; every process is stopped by PID.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.waiting import Startup

from fedsilo.lineage import arrays_digest, verify_run

from .procs import REPO, flwr_json, local_procs, start_insecure_federation, wait_run_finished

pytestmark = pytest.mark.network


def test_flwr_run_example_app_two_rounds(tmp_path: Path, startup: Startup) -> None:
    home, procs = local_procs(tmp_path)
    env = procs.env
    out = tmp_path / "runs"
    try:
        start_insecure_federation(tmp_path, procs, home, 3, startup=startup)
        # every site answers: the round timeout only bounds a failure, scaled to the load
        started = flwr_json(env, "run", str(REPO / "examples" / "flower-app"), "test",
                            "--run-config", f"rounds=2 eval-every=2 round-timeout={startup.scaled(120):.0f} "
                            f"out='{out}' run-id='net2'")
        status = wait_run_finished(env, "test", started["run-id"], out / "net2",
                                   startup.scaled(240))
        assert status == "finished:completed"
    finally:
        left = procs.stop_all()
    assert left == [], f"processes still alive: {left}"

    run_dir = out / "net2"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [(r["status"], r["sampled"], r["replied"], r["accepted"]) for r in rounds] == [("completed", 3, 3, 3)] * 2
    assert rounds[-1]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert metrics["closing_reason"] == "completed"
    with np.load(run_dir / "model.npz") as saved:
        assert arrays_digest(dict(saved)) == metrics["final_model_digest"]
    report = verify_run(run_dir, all_signatures=True)  # every signature, counted
    assert report.ok, report.summary
    # declarations + contributions + each site's signed score of the last model
    assert (report.rounds, report.site_signatures, report.closed) == (2, 3 + 6 + 3, True)
    assert "site_eval" not in rounds[0] or not rounds[0]["site_eval"]
    for r in rounds[1:]:  # the sites' own scores came through the deployment runtime
        assert sorted(r["site_eval"]["sites"]) == ["site-000", "site-001", "site-002"]
        assert r["site_eval"]["mean"]["accuracy"] > 0.3

"""Issue 6 point 1 on Flower's deployment runtime: two SecAgg+ rounds through real processes.

A real ``flower-superlink`` (insecure, loopback) and three ``flower-supernode`` processes
(``partition-id`` node configs); ``flwr run`` of the Flower App that ``fedsilo server run``
writes, with ``secagg.enabled``. The deployment runtime starts a fresh ClientApp process
for every message, so this checks what the simulation engine cannot: the protocol state
survives between the stages only through Flower's ``context.state``, and across
messages of other kinds: round 1 starts from the keys the sites advertised with their
handshake replies, round 2 from those they advertised with round 1's unmask replies,
kept in their state in between (no setup message at all). The run's lineage must show the secure sums
over all three sites; every process is stopped by PID.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.waiting import Startup

from fedsilo import lineage
from fedsilo.lineage import arrays_digest, verify_run
from fedsilo.server.config import RunConfig
from fedsilo.server.deploy import app_run_config, write_app_dir

from .procs import flwr_json, local_procs, start_insecure_federation, wait_run_finished

pytestmark = pytest.mark.network


def test_secagg_rounds_through_superlink_and_supernodes(tmp_path: Path, startup: Startup) -> None:
    home, procs = local_procs(tmp_path)
    env = procs.env
    out = tmp_path / "runs"
    # the drift check's secure sum of data profiles (five more exchanges) is tested on the
    # engine (tests/governance/test_drift.py); this test is about the rounds
    config = RunConfig.load(None, {"rounds": 2, "sites": 3, "task_options.partition": "iid", "out": str(out),
                                   "run_id": "sa1", "secagg.enabled": True,
                                   "eval_every": 2, "monitor.drift": False})
    app = write_app_dir(tmp_path / "app", app_run_config(config))
    try:
        start_insecure_federation(tmp_path, procs, home, 3, startup=startup)
        run_id = flwr_json(env, "run", str(app), "test")["run-id"]
        status = wait_run_finished(env, "test", run_id, out / "sa1", startup.scaled(240))
        assert status == "finished:completed"
    finally:
        left = procs.stop_all()
    assert left == [], f"processes still alive: {left}"

    run_dir = out / "sa1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for rnd in metrics["rounds"]:
        assert (rnd["status"], rnd["sampled"], rnd["replied"], rnd["reason"]) == \
            ("completed", 3, 3, None)
    assert metrics["rounds"][-1]["test_accuracy"] > 0.6  # two rounds on digits; chance is 0.1
    with np.load(run_dir / "model.npz") as saved:
        assert arrays_digest(dict(saved)) == metrics["final_model_digest"]
    records = [r["body"] for r in lineage.read_chain(run_dir / "lineage.sqlite")
               if r["type"] == "round"]
    assert [r["secagg"]["keys_preadvertised"] for r in records] == [3, 3]
    assert [r["secagg"]["shares_ahead"] for r in records] == [0, 3]  # round 2: two exchanges
    for record in records:
        sa = record["secagg"]
        assert sa["protocol"] == "secagg+" and sa["ok"] is True
        assert (sa["degree"], sa["threshold"]) == (2, 2)  # 3 sites: complete graph, majority
        assert sa["participant_sites"] == ["site-000", "site-001", "site-002"]
        assert sa["recovered_dropouts"] == [] and sa["excluded"] == {}
        # the server never saw an individual update: each site's signed masked vector
        assert record["accepted"] == sa["participant_sites"]
        assert [(c["site_id"], c["fate"], c["num_examples"])
                for c in record["contributions"]] == [
            (s, "accepted", None) for s in sa["participant_sites"]]
    report = verify_run(run_dir)
    assert report.ok, report.summary
    # 3 sites x 2 rounds x (masked input, unmask reply), each signed in its own ClientApp
    # process with the site's key
    # declarations + 2 per site-round + each site's signed evaluation of the last model
    assert report.site_signatures == 3 + 12 + 3, report.summary
    for site in ("site-000", "site-001", "site-002"):
        assert lineage.reconcile(run_dir, run_dir / "sites" / site / "ledger.jsonl") == []

"""SecAgg+ over Flower's real simulation engine (Ray backend).

One simulation, two SecAgg rounds: round 1 with every site, round 2 with a site whose
training raises (it drops at the masked stage and its masks are removed through its
key shares). Round 2 starts from the keys the sites advertised for it during round 1's
unmask stage (no setup exchange). The ServerApp runs in this process and keeps its
outcomes in OUTCOMES.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from helpers.waiting import Startup, wait_for

from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.server.secagg_round import SecAggOutcome, SecAggSession

from .apps import site_update, train_content

N = 6
FAIL_PID = 4
CFG = SecAggConfig(clip_range=0.5, bits=20, max_weight=100.0)
OUTCOMES: list[SecAggOutcome] = []
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "RAY_USAGE_STATS_ENABLED": "0"}


def run_flower_simulation(server_app: ServerApp, client_app: ClientApp, n: int) -> None:
    """The one place that calls Flower's deprecated `run_simulation` (Ray backend, 1 CPU/site)."""
    os.environ.update(ENV)
    from flwr.simulation import run_simulation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                       backend_name="ray",
                       backend_config={"client_resources": {"num_cpus": 1}})


def _server_app(timeout: float) -> ServerApp:
    """``timeout``: a safety net for each exchange (a failing site answers with an error)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # virtual nodes register asynchronously
        nodes: list[int] = wait_for(lambda: len(ids := sorted(grid.get_node_ids())) >= N and ids,
                                    f"{N} virtual nodes to register", timeout, poll=0.2)
        session = SecAggSession(CFG, "sim-run", timeout=timeout)  # keeps round 2's keys
        for rnd in (1, 2):
            OUTCOMES.append(session.exchange(grid, nodes, train_content=train_content(rnd),
                                             server_round=rnd, announce_next=rnd == 1))

    return app


@pytest.mark.slow
def test_secagg_rounds_on_the_ray_simulation_engine(startup: Startup) -> None:
    from .apps import make_client_app

    OUTCOMES.clear()
    run_flower_simulation(_server_app(startup.scaled(60)),
                          make_client_app(fail_pid=FAIL_PID, fail_round=2), N)
    assert len(OUTCOMES) == 2
    for rnd, out in enumerate(OUTCOMES, start=1):
        assert out.ok, out.reason
        pids = [p for p in range(N) if not (rnd == 2 and p == FAIL_PID)]
        ups = [site_update(p) for p in pids]
        total = sum(w * x.astype(np.float64) for x, w in ups)
        assert out.sum_delta is not None
        assert np.max(np.abs(out.sum_delta - total)) < out.lineage["quantisation"]["bound"] + 1e-5
        assert abs(out.total_weight - sum(w for _, w in ups)) < 1e-3
        assert len(out.participants) == len(pids)
    first, second = OUTCOMES
    assert first.next_keys is not None and sorted(first.next_keys.keys) == sorted(first.participants)
    assert (first.lineage["keys_preadvertised"], second.lineage["keys_preadvertised"]) == (0, N)
    assert second.next_keys is None
    assert first.recovered == [] and all(v == [] for v in first.dropped.values())
    assert len(second.recovered) == 1 and second.dropped["masked"] == second.recovered
    assert "crashed while training" in second.lineage["excluded"][str(second.recovered[0])]

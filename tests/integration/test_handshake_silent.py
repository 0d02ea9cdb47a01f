"""A node that never answers the handshake: the run does not start, and its one-line
error names the node and the timeout it waited (the project's ServerApp and ClientApp on
the in-process grid, with the node's replies lost in transit)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsilo import lineage
from fedsilo.client import make_client_app
from fedsilo.server.app import ServerOutcome, make_server_app
from fedsilo.server.config import RunConfig
from fedsilo.simulations.inprocess import InProcessGrid
from fedsilo.simulations.runner import build_server_spec
from fedsilo.simulations.sites import simulated_site


class _LosesOneNode(InProcessGrid):
    """Every reply of node ``silent`` is lost (its node runs, its answer never arrives)."""

    silent = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = list(super().push_messages(messages))
        for i in ids:
            if self._replies[i].metadata.src_node_id == self.silent:
                del self._replies[i]
        return ids


def test_a_node_that_never_answers_the_handshake_is_named(tmp_path: Path) -> None:
    cfg = RunConfig.load(None, {"sites": 3, "rounds": 1, "out": str(tmp_path),
                                "run_id": "silent", "round_timeout": 0.5})
    run_dir = tmp_path / "silent"
    run_dir.mkdir()
    spec = build_server_spec(cfg, run_dir)
    grid = _LosesOneNode(make_client_app(simulated_site), 3)
    grid.silent = sorted(grid.get_node_ids())[1]
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    outcome = ServerOutcome()
    with contextlib.suppress(Exception):  # the outcome holds the error; asserted below
        make_server_app(lambda _c: spec, outcome)(
            grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    expected = (f"handshake: 2 of 3 sites answered (1 node did not answer within "
                f"round_timeout=0.5 s: {grid.silent})")
    assert str(outcome.error) == expected
    # nothing trained: the chain closes on its genesis with the reason, and no model is saved
    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    assert [r["type"] for r in chain] == ["genesis", "closing"]
    assert (chain[-1]["body"]["reason"], chain[-1]["body"]["detail"]) == (
        "error", f"FederationError: {expected}")
    assert not (run_dir / "model.npz").exists()

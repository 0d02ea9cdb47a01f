"""Issue 21 point 5: one update path at the site, plain or under SecAgg+.

Under SecAgg+ a site's update goes through the same `fedsilo.client.update.site_reply` as a
plain one: each SecAgg+ round leaves a ``sent`` entry in every site's ledger, and a site
that refuses (its policy's ``max_rounds``, its privacy budget, an update it cannot send)
records the refusal in its ledger and answers it (`Refusal.to_error`) instead of raising
through the ClientApp; its protocol state is dropped and the round completes with the
other sites (the refusing site's masks are removed through its key shares).

The federation tests run the project's ServerApp and ClientApp on the in-process grid
(`run_federation(engine="inprocess")`); the handler test drives `register_secagg` over the
fake grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from fedsilo import lineage
from fedsilo.client.policy import SitePolicy
from fedsilo.client.secagg_handler import STATE_KEY, LocalUpdate, register_secagg
from fedsilo.common.protocol import REFUSAL_ERROR_CODE, Refusal
from fedsilo.lineage import SiteLedger
from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.server.config import RunConfig
from fedsilo.simulations import sites as simulated_sites
from fedsilo.simulations.runner import run_federation

from .apps import StubSite, site_fingerprint, site_key, site_update, train_content
from .fake_grid import FakeGrid

REFUSING = "site-001"


def _ledger(run_dir: Path, site: str) -> list[dict[str, Any]]:
    return SiteLedger(run_dir / "sites" / site / "ledger.jsonl").entries()


@pytest.fixture
def refusing_after_round_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Site ``REFUSING``'s policy takes part in round 1 only (``max_rounds = 1``)."""
    build = simulated_sites._build_site

    def with_policy(federation_json: str, pid: int) -> Any:
        site = build(federation_json, pid)
        if site.site_id == REFUSING:
            site.policy = SitePolicy(max_rounds=1)
        return site

    monkeypatch.setattr(simulated_sites, "_build_site", with_policy)


def test_secagg_rounds_reach_every_ledger_and_a_refusal_is_answered(
        tmp_path: Path, refusing_after_round_1: None) -> None:
    cfg = RunConfig.load(None, {"out": str(tmp_path), "run_id": "one-path", "sites": 5,
                                "rounds": 2, "seed": 1, "secagg.enabled": True})
    run = run_federation(cfg, engine="inprocess")
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    rounds = {r["body"]["round"]: r["body"] for r in chain if r["type"] == "round"}
    everyone = [f"site-{i:03d}" for i in range(5)]
    others = [s for s in everyone if s != REFUSING]
    assert rounds[1]["secagg"]["participant_sites"] == everyone
    # the round completes without the refusing site, whose masks are recovered
    assert rounds[2]["status"] == "completed"
    assert rounds[2]["secagg"]["participant_sites"] == others
    # recorded as a plain round records a refusal, which the site's ledger reconciles with
    assert rounds[2]["rejected"][REFUSING] == "refused by site: round 2 exceeds the site's max_rounds 1"

    for site in everyone:
        entries = _ledger(run.run_dir, site)
        sent = {e["round"]: e for e in entries if e["status"] == "sent"}
        # (a) a ledger entry for every SecAgg+ round the site took part in: the digest of
        # exactly the masked vector the server recorded for it
        expected = [1] if site == REFUSING else [1, 2]
        assert sorted(sent) == expected
        for rnd in expected:
            entry = sent[rnd]
            assert entry["secagg"] == "masked_input"
            (contribution,) = [c for c in rounds[rnd]["contributions"] if c["site_id"] == site]
            assert entry["update_digest"] == contribution["update_digest"]
            assert entry["signature"] == contribution["signature"]
        # (b) the refusal is in the refusing site's own ledger, with its reason
        refused = [e for e in entries if e["status"] == "refused"]
        if site == REFUSING:
            assert [(e["round"], e["reason"]) for e in refused] == [
                (2, "round 2 exceeds the site's max_rounds 1")]
        else:
            assert refused == []
        assert lineage.query.reconcile(run.run_dir, run.run_dir / "sites" / site
                                       / "ledger.jsonl") == []
    assert lineage.verify_run(run.run_dir).ok


# ------------------------------------------------------- the handler, over the fake grid
NODES = [7001 + 13 * i for i in range(5)]
CFG = SecAggConfig(clip_range=0.5, bits=20, max_weight=100.0)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Messages built outside a running app need the task identity set.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    yield


def _app(ledger_dir: Path, refusing_pid: int) -> ClientApp:
    app = ClientApp()

    def identify(message: Message, context: Context) -> StubSite:
        pid = int(context.node_config["partition-id"])
        return StubSite(f"site-{pid}", site_key(pid), site_fingerprint(pid),
                        SiteLedger(ledger_dir / f"{pid}.jsonl", fsync=False))

    def fit_update(message: Message, context: Context) -> LocalUpdate | Refusal:
        pid = int(context.node_config["partition-id"])
        if pid == refusing_pid:
            return Refusal(f"site-{pid}", "the site's policy says no")
        delta, weight = site_update(pid)
        return LocalUpdate(delta=delta, weight=weight)

    register_secagg(app, fit_update, identify)
    return app


def test_a_refusal_at_the_masked_stage_is_recorded_answered_and_cleans_up(
        tmp_path: Path) -> None:
    try:  # one secure exchange on a fresh server session (the server's SecAgg+ driver)
        from .helpers import run_secagg_round  # type: ignore[attr-defined]
    except ImportError:  # before the server's SecAgg+ session existed
        from fedsilo.server.secagg_round import run_secagg_round  # type: ignore[attr-defined,no-redef]

    grid = FakeGrid(_app(tmp_path, refusing_pid=2), NODES)
    out = run_secagg_round(grid, NODES, train_content=train_content(1), config=CFG,  # type: ignore[arg-type]
                           run_id="handler", server_round=1, timeout=5.0)
    assert out.ok and out.participants == [n for n in NODES if n != NODES[2]]
    assert NODES[2] in out.recovered
    # answered with the refusal (an error reply with the refusal's code), not a crash
    (answer,) = [m for m in grid.received if m.metadata.src_node_id == NODES[2]
                 and m.metadata.message_type == "train.secagg_masked"]
    assert answer.has_error() and answer.error.code == REFUSAL_ERROR_CODE
    assert Refusal.from_error(answer.error, "site-2") == Refusal("site-2",
                                                                 "the site's policy says no")
    assert "the site's policy says no" in out.lineage["excluded"][str(NODES[2])]
    # the round is over for the refusing site: no protocol state left behind
    assert STATE_KEY not in grid.contexts[NODES[2]].state
    assert isinstance(grid.contexts[NODES[0]].state.get(STATE_KEY), ConfigRecord)
    entries = SiteLedger(tmp_path / "2.jsonl").entries()
    assert [(e["status"], e["round"], e["reason"]) for e in entries] == [
        ("refused", 1, "the site's policy says no")]
    for pid in (0, 1, 3, 4):
        assert [e["status"] for e in SiteLedger(tmp_path / f"{pid}.jsonl").entries()] == [
            "sent", "unmasked"]

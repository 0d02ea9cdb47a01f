"""DP and SecAgg+ inside real rounds (the project's apps on the in-process grid)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsilo import lineage
from fedsilo.simulations import sites
from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.runner import run_federation


def _run(tmp_path: Path, run_id: str, **opts: object):
    cfg = SimulationConfig.load(None, {"out": str(tmp_path), "run_id": run_id, **opts})
    return run_federation(cfg, engine="inprocess")


def test_budget_stops_the_run_with_a_closing_record(tmp_path: Path) -> None:
    run = _run(tmp_path, "dp", sites=10, fraction=0.5, rounds=40,
               **{"dp.enabled": True, "dp.epsilon": 2.0, "dp.noise_multiplier": 3.0})
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    closing = chain[-1]["body"]
    assert closing["reason"] == "budget_exhausted"
    assert "privacy budget exhausted" in closing["detail"]
    rounds = [r["body"] for r in chain if r["type"] == "round"]
    assert 3 <= len(rounds) < 40  # z=3, q=0.5: about 0.9 epsilon in round 1, 2.0 after ~7
    eps = [r["privacy"]["epsilon_cumulative"] for r in rounds]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert eps[-1] <= 2.0 and closing["epsilon_spent"] == eps[-1]
    p = rounds[0]["privacy"]
    assert p["mechanism"] == "dp-fedavg/gaussian" and p["noise_multiplier"] == 3.0
    assert p["sample_rate"] == 0.5 and p["clip_norm"] == 1.0 and "rdp" in p["accountant"]
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert [r["epsilon"] for r in metrics["rounds"]] == eps
    assert lineage.verify_run(run.run_dir).ok


@pytest.fixture(params=["one site object", "a site per message"])
def site_objects(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sites kept in memory across messages (one worker), or built afresh for every
    message, as Flower's deployment runtime does (a fresh ClientApp process per message):
    what a site counts must then come back from the node's context.state."""
    if request.param == "a site per message":
        monkeypatch.setattr(sites, "_build_site", sites._build_site.__wrapped__)
    return str(request.param)


def test_site_ceiling_refusals_are_recorded_on_both_sides(tmp_path: Path, site_objects: str
                                                          ) -> None:
    run = _run(tmp_path, "ceiling", sites=4, rounds=6, site_max_epsilon=8.0,
               **{"dp.enabled": True, "dp.noise_multiplier": 1.0})
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    rounds = [r["body"] for r in chain if r["type"] == "round"]
    refused_rounds = [r for r in rounds if r["rejected"]]
    assert refused_rounds, "sites should refuse once their ceiling would be passed"
    first = refused_rounds[0]
    # under DP a sampled round is always released and accounted (noise only here)
    assert first["accepted"] == [] and first["privacy"]["epsilon_cumulative"] > 0
    assert all(v.startswith("refused by site: ") for v in first["rejected"].values())
    ledger = lineage.SiteLedger(run.run_dir / "sites" / "site-000" / "ledger.jsonl").entries()
    refusals = [e for e in ledger if e["status"] == "refused"]
    assert refusals and refusals[0]["round"] == first["round"]
    assert "epsilon" in refusals[0]["reason"]
    # nobody passed their ceiling: the rounds each site took part in stay within it
    # z=1, every site every round: epsilon 4.73 after one round, 7.08 after two, 9.01
    # after three, so with a ceiling of 8 each site takes part in rounds 1-2 only
    sent = [e for e in ledger if e["status"] == "sent"]
    assert [e["round"] for e in sent] == [1, 2] and first["round"] == 3
    assert lineage.verify_run(run.run_dir).ok


def test_secagg_round_matches_plain_aggregation_within_quantisation(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain", sites=5, rounds=2, seed=1)
    secure = _run(tmp_path, "secure", sites=5, rounds=2, seed=1, **{"secagg.enabled": True})
    with np.load(plain.run_dir / "model.npz") as a, np.load(secure.run_dir / "model.npz") as b:
        for name in a.files:
            assert np.max(np.abs(a[name] - b[name])) < 1e-3, name
    chain = lineage.read_chain(secure.run_dir / "lineage.sqlite")
    rounds = [r["body"] for r in chain if r["type"] == "round"]
    rec = rounds[0]
    # no setup exchange: round 1's keys came with the handshake, round 2's with round 1;
    # round 2 started at its masked stage (its shares came with round 1's unmask replies)
    assert [r["secagg"]["keys_preadvertised"] for r in rounds] == [5, 5]
    assert [r["secagg"]["shares_ahead"] for r in rounds] == [0, 5]
    assert rec["secagg"]["participant_sites"] == [f"site-{i:03d}" for i in range(5)]
    assert rec["secagg"]["protocol"].startswith("secagg")
    # the server never saw an individual update: each contribution is the site's signed
    # masked vector (its example count stays inside the secure sum)
    assert [(c["site_id"], c["fate"], c["num_examples"]) for c in rec["contributions"]] == [
        (f"site-{i:03d}", "accepted", None) for i in range(5)]
    report = lineage.verify_run(secure.run_dir)
    # declarations; masked input + unmask reply; each site's evaluation of each round's model
    assert report.ok and report.site_signatures == 5 + 5 * 2 * 2 + 5 * 2
    # ...and every site in the secure sums contributed to the final model, with its data
    from fedsilo.lineage.query import contributors

    genesis = chain[0]["body"]
    found = contributors(secure.run_dir)
    assert [(c.site_id, c.data_fingerprint, c.rounds) for c in found] == [
        (s["site_id"], s["data_fingerprint"], [1, 2]) for s in genesis["sites"]
    ]


def test_record_level_dp_sgd_each_site_accounts_and_reports(tmp_path: Path, site_objects: str
                                                            ) -> None:
    run = _run(tmp_path, "rdp", sites=3, rounds=2, **{"record_dp.enabled": True, "record_dp.epsilon": 2.0})
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    rounds = [r["body"] for r in chain if r["type"] == "round"]
    eps = [r["privacy"]["record_level"]["site_epsilon"] for r in rounds]
    assert set(eps[0]) == {"site-000", "site-001", "site-002"}
    for site in eps[0]:
        # one noise multiplier calibrated for both rounds: the budget is reached after
        # round 2, not before (RDP composition makes round 1 cost more than half)
        assert 0.5 < eps[0][site] < eps[1][site] and 1.99 <= eps[1][site] <= 2.0 + 1e-6
        contribution = next(c for c in rounds[1]["contributions"] if c["site_id"] == site)
        assert contribution["detail"]["record_epsilon"] == eps[1][site]
    assert lineage.verify_run(run.run_dir).ok


def test_secagg_with_sampling_reuses_keys_of_sites_sampled_twice_in_a_row(tmp_path: Path) -> None:
    """Keys advertised for round r are used for the sites sampled in both r - 1 and r (for
    round 1: every sampled site, from the handshake); the others get a setup message (and
    sites sampled again later replace or renew theirs)."""
    run = _run(tmp_path, "sampled", sites=6, rounds=5, fraction=0.6, seed=0,
               **{"secagg.enabled": True})
    rounds = [r["body"] for r in lineage.read_chain(run.run_dir / "lineage.sqlite")
              if r["type"] == "round"]
    assert [r["status"] for r in rounds] == ["completed"] * 5
    assert all(r["secagg"]["participant_sites"] == sorted(r["sampled"]) for r in rounds)
    both = [4] + [len(set(a["sampled"]) & set(b["sampled"])) for a, b in zip(rounds[:-1], rounds[1:], strict=True)]
    assert [r["secagg"]["keys_preadvertised"] for r in rounds] == both
    assert [r["secagg"]["shares_ahead"] for r in rounds] == [0] * 5  # next sample unknown
    assert 4 < sum(both) < 5 * 4  # some keys reused, some sites set up afresh
    assert lineage.verify_run(run.run_dir).ok

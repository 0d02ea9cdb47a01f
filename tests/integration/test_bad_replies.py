"""Malformed and hostile replies are rejected before aggregation, with the reason in lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context

from fedsilo import lineage
from fedsilo.client import FitResult, Site, make_client_app
from fedsilo.server.app import ServerOutcome, make_server_app
from fedsilo.server.config import RunConfig
from fedsilo.simulations.inprocess import run_in_process
from fedsilo.simulations.runner import build_server_spec
from fedsilo.simulations.sites import simulated_site


class _Hostile:
    """Wraps a site's trainer and corrupts what it returns."""

    def __init__(self, inner: Any, how: str) -> None:
        self.inner, self.how = inner, how

    def fit(self, weights: dict[str, np.ndarray], config: Any) -> FitResult:
        res = self.inner.fit(weights, config)
        w = {k: v.copy() for k, v in res.weights.items()}
        if self.how == "nan":
            w["fc1.weight"][0, 0] = np.nan
        elif self.how == "huge":
            w = {k: v * 1e9 for k, v in w.items()}
        return FitResult(w, res.num_examples, res.metrics)

    def evaluate(self, weights: dict[str, np.ndarray], config: Any) -> Any:
        return self.inner.evaluate(weights, config)

    def data_fingerprint(self) -> str:
        return self.inner.data_fingerprint()

    def num_examples(self) -> int:
        return self.inner.num_examples()


def _run(tmp_path: Path, hostile: dict[str, str], **opts: Any) -> tuple[list[dict], Path]:
    cfg = RunConfig.load(None, {"sites": 4, "rounds": 2, "out": str(tmp_path), "run_id": "bad", **opts})
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    spec = build_server_spec(cfg, run_dir)
    sites: dict[str, Site] = {}

    def factory(context: Context, federation: Any) -> Site:
        site = simulated_site(context, federation)
        if site.site_id in hostile and site.site_id not in sites:
            sites[site.site_id] = Site(site.site_id, _Hostile(site.trainer, hostile[site.site_id]),
                                       key=site.key, ledger=site.ledger, policy=site.policy)
        return sites.get(site.site_id, site)

    outcome = ServerOutcome()
    run_in_process(make_server_app(lambda _c: spec, outcome), make_client_app(factory), 4)
    assert outcome.error is None
    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    return [r["body"] for r in chain if r["type"] == "round"], run_dir


def test_nan_and_absurd_norm_updates_are_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    rounds, _ = _run(tmp_path, {"site-001": "nan", "site-002": "huge"})
    for rec in rounds:
        assert rec["status"] == "completed"
        assert set(rec["rejected"]) == {"site-001", "site-002"}
        assert "NaN" in rec["rejected"]["site-001"] or "finite" in rec["rejected"]["site-001"]
        assert "norm" in rec["rejected"]["site-002"]
        assert rec["accepted"] == ["site-000", "site-003"]
        assert rec["model_out"] != rec["model_in"]


def test_too_few_usable_updates_leave_the_model_unchanged(tmp_path: Path) -> None:
    rounds, run_dir = _run(tmp_path, {"site-001": "nan", "site-002": "huge"}, min_sites=3)
    for rec in rounds:
        assert rec["status"] == "skipped"
        assert rec["model_out"] == rec["model_in"]
        assert rec["reason"].startswith("2 usable updates; min_sites is 3")
    genesis_model = lineage.read_chain(run_dir / "lineage.sqlite")[0]["body"]["initial_model_digest"]
    assert rounds[-1]["model_out"] == genesis_model

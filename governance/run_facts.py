"""What a verified run says about itself: the facts a model card or a tracker export shows.

Contract: `read_run_facts` verifies the run first (`fedsilo.lineage.verify_run`: every
digest, link and signature, and the final model against ``model.npz``) and refuses a run
whose chain does not verify, with the verifier's one-line reason. Everything in
`RunFacts` then comes from the chain's records (genesis, rounds, resumes, closing) plus
two files of the run directory that the chain pins: ``model.npz`` (its digest is the
chain's final model) and ``report.html`` (attached as is). Nothing is read from the
sites, and nothing that the chain does not sign is presented as a fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.common.errors import FedsiloError
from fedsilo.lineage import LineageError, key_fingerprint, load_chain, verify_run


class GovernanceError(FedsiloError, ValueError):
    """A run that cannot be documented or exported (one line: what, and what to do)."""


@dataclass(frozen=True)
class SiteScore:
    """One site's signed score of the final model (its last evaluation in the chain)."""

    site_id: str
    round: int
    loss: float
    num_examples: int
    metrics: dict[str, float]


@dataclass
class RunFacts:
    """The verified facts of one run (see the module docstring).

    Attributes:
        run_dir: the run directory.
        genesis: the genesis body (config, code version, sites, task, server key).
        rounds: every round body, in chain order (a resumed run lists re-run rounds again).
        resumes: every resume body.
        closing: the closing body, or None while the run is still going.
        chain_head: digest of the last record (what the server's signature covers).
        records: number of records.
        verify_summary: the verifier's one-line summary.
        site_signatures: site signatures the verifier checked.
        server_key: fingerprint of the server key that signed the chain.
        final_model: the model the chain ends with.
        site_scores: each site's last signed score of the final model (site id order).
        flags: monitor flags recorded in the rounds (``extra["flags"]``), in order.
    """

    run_dir: Path
    genesis: dict[str, Any]
    rounds: list[dict[str, Any]]
    resumes: list[dict[str, Any]]
    closing: dict[str, Any] | None
    chain_head: str
    records: int
    verify_summary: str
    site_signatures: int
    server_key: str
    final_model: str
    site_scores: list[SiteScore] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The run config as genesis recorded it."""
        return dict(self.genesis.get("config") or {})

    @property
    def completed_rounds(self) -> list[dict[str, Any]]:
        """The last record of each round number that changed the model (resumes resolved)."""
        last: dict[int, dict[str, Any]] = {}
        for body in self.rounds:
            last[int(body["round"])] = body
        return [b for _, b in sorted(last.items()) if b.get("status") == "completed"]

    def central_metrics(self) -> dict[str, list[tuple[int, float]]]:
        """Per metric name, (round, value) of the server's own evaluation, when it had data
        (the privacy spent, also in the metrics, is the privacy section's)."""
        out: dict[str, list[tuple[int, float]]] = {}
        for body in self.completed_rounds:
            for name, value in (body.get("metrics") or {}).items():
                if str(name).startswith("epsilon"):
                    continue
                if isinstance(value, int | float) and np.isfinite(value):
                    out.setdefault(str(name), []).append((int(body["round"]), float(value)))
        return out


def read_run_facts(run_dir: Path) -> RunFacts:
    """Verify ``run_dir`` and collect its facts.

    Raises:
        GovernanceError: the directory is not a run, or its chain does not verify (the
            message carries the verifier's reason).
    """
    try:
        report = verify_run(Path(run_dir))
        if not report.ok:
            raise GovernanceError(f"{run_dir}: the lineage chain does not verify "
                                  f"({report.first_failure}); nothing is documented for it")
        chain = load_chain(Path(run_dir))
    except LineageError as exc:
        raise GovernanceError(str(exc)) from None
    bodies = {t: [e["body"] for e in chain.of_type(t)] for t in ("round", "resume")}
    facts = RunFacts(
        run_dir=Path(run_dir), genesis=chain.genesis, rounds=bodies["round"],
        resumes=bodies["resume"], closing=chain.closing,
        chain_head=str(chain.envelopes[-1]["digest"]), records=report.records,
        verify_summary=report.summary, site_signatures=report.site_signatures,
        server_key=key_fingerprint(str(chain.genesis["server_public_key"])),
        final_model=str(report.final_model_digest or chain.current_model()),
    )
    facts.site_scores = _last_scores(facts.rounds, facts.final_model)
    facts.flags = [flag for body in facts.rounds
                   for flag in (body.get("extra") or {}).get("flags", [])]
    return facts


def _last_scores(rounds: list[dict[str, Any]], model: str) -> list[SiteScore]:
    """Each site's latest signed evaluation of ``model`` (the final model)."""
    latest: dict[str, SiteScore] = {}
    for body in rounds:
        for ev in body.get("evaluations") or []:
            if ev.get("model_digest") == model:
                latest[str(ev["site_id"])] = SiteScore(
                    site_id=str(ev["site_id"]), round=int(body["round"]),
                    loss=float(ev["loss"]), num_examples=int(ev["num_examples"]),
                    metrics={str(k): float(v) for k, v in (ev.get("metrics") or {}).items()},
                )
    return [latest[s] for s in sorted(latest)]


def score_spread(scores: list[SiteScore], metric: str) -> dict[str, Any] | None:
    """Mean (weighted by held-out examples), unweighted spread and worst site of ``metric``
    over the sites' scores; None when no site reported it. Lower is worse for every metric
    but losses (``loss``, names ending in ``loss``, ``rmse``, ``mae``, ``mse``)."""
    rows = [(s.site_id, s.num_examples, s.loss if metric == "loss" else s.metrics.get(metric))
            for s in scores]
    rows = [(site, n, v) for site, n, v in rows if v is not None]
    if not rows:
        return None
    values = np.array([v for _, _, v in rows], dtype=np.float64)
    weights = np.array([n for _, n, _ in rows], dtype=np.float64)
    lower_is_better = metric == "loss" or metric.endswith(("loss", "rmse", "mae", "mse"))
    worst = int(np.argmax(values) if lower_is_better else np.argmin(values))
    return {
        "metric": metric, "sites": len(rows),
        "mean": float(np.average(values, weights=weights)) if weights.sum() > 0
        else float(values.mean()),
        "std": float(values.std()), "min": float(values.min()), "max": float(values.max()),
        "worst_site": rows[worst][0], "worst": float(values[worst]),
    }

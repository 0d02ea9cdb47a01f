"""The round's monitor step: what the server saw, handed to `fedsilo.governance.monitor`.

Between ``evaluate`` and ``record`` (`fedsilo.server.round.run_round`), `observe` builds
the round's `RoundView` from the exchange and the evaluation, asks the run's `Monitor`
for flags and returns them as dicts for the round record's ``extra["flags"]``. The view
holds only what the server legitimately has: each screened-in update's norm (already
computed by screening) and its cosine to the round's aggregate (one pass of row dots,
plain rounds only), the rejections and refusals with their reasons, the sites' signed
scores, the loss and the privacy spent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsilo.common.protocol import REFUSAL_PREFIX
from fedsilo.governance.monitor import Monitor, RoundView
from fedsilo.privacy.site_budget import CEILING_REASON
from fedsilo.strategies import kernels
from fedsilo.strategies.batch import UpdateBatch

if TYPE_CHECKING:
    from fedsilo.server.loop import FederationServer
    from fedsilo.server.round import Evaluated, Exchanged
    from fedsilo.server.spec import SiteInfo

SCORE_METRICS = ("accuracy", "auroc", "c_index", "macro_f1")
"""Site metrics the monitor follows (higher is better), first found wins; losses are not
comparable across tasks, so a task reporting none of these gets no score flags."""


def update_geometry(batch: UpdateBatch, update: np.ndarray | None
                    ) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
    """(site ids, norms, cosines) of the batch's rows; a row's cosine is to the weighted
    mean of the *other* rows (leave-one-out), so one large malicious update cannot turn
    the honest sites' directions against "the aggregate" it dominates. ``update`` (the
    round's aggregate) only says whether the round aggregated at all."""
    if not batch.n:
        return [], None, None
    norms = np.sqrt(np.maximum(np.asarray(batch.sq_norms, dtype=np.float64), 0.0))
    if update is None or batch.n < 2:
        return list(batch.site_ids), norms, None
    p = batch.weights / batch.weights.sum() if batch.weights.sum() > 0 else \
        np.full(batch.n, 1.0 / batch.n)
    mean = np.asarray(batch.weighted_mean, dtype=np.float32)
    dots = np.asarray(kernels.row_dots(batch.updates, mean), dtype=np.float64)  # u_i . m
    mean_sq = float(np.dot(mean.astype(np.float64), mean.astype(np.float64)))
    rest = np.maximum(1.0 - p, 1e-12)
    loo_dot = (dots - p * norms**2) / rest  # u_i . m_-i
    loo_sq = np.maximum(mean_sq - 2 * p * dots + p**2 * norms**2, 0.0) / rest**2
    scale = norms * np.sqrt(loo_sq)
    cosines = np.divide(loo_dot, scale, out=np.zeros_like(loo_dot), where=scale > 0)
    return list(batch.site_ids), norms, np.clip(cosines, -1.0, 1.0)


def site_scores(evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Site id -> its score of the new model, on the first `SCORE_METRICS` name reported."""
    names = {k for e in evaluations for k in (e.get("metrics") or {})}
    metric = next((m for m in SCORE_METRICS if m in names), None)
    if metric is None:
        return {}
    return {str(e["site_id"]): float(e["metrics"][metric]) for e in evaluations
            if metric in (e.get("metrics") or {})}


def observe(monitor: Monitor, server_round: int, *, sampled: Sequence[str],
            replied: Sequence[str], rejected: Mapping[str, str],
            geometry: tuple[list[str], np.ndarray | None, np.ndarray | None],
            loss: float | None, evaluations: Sequence[Mapping[str, Any]],
            budget_fraction: float | None) -> list[dict[str, Any]]:
    """The round's flags as dicts (see the module docstring)."""
    refusal = REFUSAL_PREFIX + CEILING_REASON
    site_ids, norms, cosines = geometry
    if loss is None and evaluations:  # no central data: the sites' mean loss
        loss = float(np.mean([float(e["loss"]) for e in evaluations]))
    view = RoundView(
        round=server_round, sampled=list(sampled), replied=list(replied),
        rejected={s: r for s, r in rejected.items() if not r.startswith(REFUSAL_PREFIX)},
        privacy_refusals=sorted(s for s, r in rejected.items() if r.startswith(refusal)),
        site_ids=site_ids, norms=norms, cosines=cosines, loss=loss,
        site_scores=site_scores(evaluations), budget_fraction=budget_fraction)
    return [flag.to_dict() for flag in monitor.observe(view)]


def eligible(server: FederationServer) -> list[SiteInfo]:
    """The sites a round may sample: all, but those the monitor excluded."""
    excluded = server.monitor.excluded if server.monitor is not None else {}
    return [s for s in server.sites if s.site_id not in excluded] if excluded else server.sites


def monitor(server: FederationServer, server_round: int, sampled: list[SiteInfo],
            ex: Exchanged, ev: Evaluated) -> list[dict[str, Any]]:
    """The round's monitor step: its flags (`observe`); [] when the monitor is off."""
    if server.monitor is None:
        return []
    cfg = server.spec.config
    spent = None
    if server.dp is not None and cfg.dp.epsilon:
        spent = float(server.dp.accountant.get_epsilon()) / float(cfg.dp.epsilon)
    return observe(
        server.monitor, server_round, sampled=[s.site_id for s in sampled],
        replied=ex.replied, rejected=ex.rejected, geometry=ex.geometry, loss=ev.test_loss,
        evaluations=ev.evaluations, budget_fraction=spent)

"""The run's monitor: flags computed every round from what the server legitimately sees.

Contract: the server hands `Monitor.observe` one `RoundView` per round (after
aggregation, before the round is recorded) and writes the returned flags into that
round's lineage record. The view holds only what the server has anyway: who was sampled,
who replied, what was rejected and why, each accepted update's norm and its cosine to the
aggregate (plain rounds; ``None`` under SecAgg+, where only the flags that need no
individual update apply), the sites' signed scores, the global loss and the share of the
privacy budget spent. All per-site tests run on whole arrays.

The monitor's state (each site's norm history, best scores, recent participation, the
excluded sites) is kept in every checkpoint (`state_dict`): a resumed run goes on with it.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .flags import UPDATE_CODES, Flag, MonitorConfig, rank

_MAD_SCALE = 1.4826  # MAD of a normal sample -> its standard deviation
_LOG_FLOOR = 0.1  # smallest spread of log norms trusted (10%): a steady site is not an outlier
_HISTORY = 10
_COS_FLOOR = 0.05  # smallest spread of the peers' cosines trusted


@dataclass
class RoundView:
    """What the server saw in one round (see the module docstring).

    Attributes:
        round: the round number.
        sampled: site ids sampled.
        replied: site ids that replied in time.
        rejected: site id -> reason, for replies screened out.
        privacy_refusals: site ids that refused under their own privacy ceiling.
        site_ids: the accepted sites, one per row of ``norms`` and ``cosines``.
        norms: each accepted update's L2 norm (None under SecAgg+).
        cosines: each accepted update's cosine to the aggregate (None under SecAgg+).
        loss: the global model's loss (central, else the sites' mean), if evaluated.
        site_scores: site id -> its score of the new model (higher is better), if evaluated.
        budget_fraction: share of the DP budget spent so far (None without DP).
    """

    round: int
    sampled: list[str]
    replied: list[str]
    rejected: dict[str, str] = field(default_factory=dict)
    privacy_refusals: list[str] = field(default_factory=list)
    site_ids: list[str] = field(default_factory=list)
    norms: np.ndarray | None = None
    cosines: np.ndarray | None = None
    loss: float | None = None
    site_scores: dict[str, float] = field(default_factory=dict)
    budget_fraction: float | None = None


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|values - median(reference)| / (1.4826 MAD(reference)), spread floored at `_LOG_FLOOR`."""
    center = np.median(reference)
    spread = max(_MAD_SCALE * float(np.median(np.abs(reference - center))), _LOG_FLOOR)
    return np.abs(values - center) / spread


class Monitor:
    """Flags for one run (see the module docstring).

    Args:
        config: the thresholds and the policy on error flags.
        secagg: the run aggregates under SecAgg+ (the update flags do not apply).
    """

    def __init__(self, config: MonitorConfig, *, secagg: bool = False) -> None:
        self.config = config
        self.secagg = secagg
        self.norms: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=_HISTORY))
        self.outcomes: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=config.window))
        self.best_score: dict[str, float] = {}
        self.dropping: set[str] = set()  # sites already flagged for a score drop (re-armed on recovery)
        self.best_loss: float | None = None
        self.least_gap: float | None = None
        self.gap_open = False  # a fairness gap is flagged and not yet closed (raised once)
        self.budget_flagged = False
        self.excluded: dict[str, str] = {}  # site -> the flag code that excluded it
        self.stop_reason: str | None = None
        self.at_start: list[tuple[str, str | None, dict[str, float | str]]] = []

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (kept in every checkpoint: a resumed run's monitor goes
        on from where the crash left it, an excluded site stays excluded)."""
        return {"norms": {s: list(h) for s, h in self.norms.items()},
                "outcomes": {s: list(h) for s, h in self.outcomes.items()},
                "best_score": dict(self.best_score), "dropping": sorted(self.dropping),
                "best_loss": self.best_loss, "least_gap": self.least_gap,
                "gap_open": self.gap_open, "budget_flagged": self.budget_flagged,
                "excluded": dict(self.excluded),
                "at_start": [list(f) for f in self.at_start]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`'s state."""
        for site, history in state["norms"].items():
            self.norms[site].extend(history)
        for site, history in state["outcomes"].items():
            self.outcomes[site].extend(history)
        self.best_score = dict(state["best_score"])
        self.dropping = set(state["dropping"])
        self.best_loss, self.least_gap = state["best_loss"], state["least_gap"]
        self.gap_open, self.budget_flagged = state["gap_open"], state["budget_flagged"]
        self.excluded = dict(state["excluded"])
        self.at_start = [(code, site, dict(evidence)) for code, site, evidence in state["at_start"]]

    def start_findings(self, findings: list[tuple[str, str | None, dict[str, float | str]]]
                       ) -> None:
        """Findings made before round 1 (the drift check, `fedsilo.governance.drift`):
        raised as flags of the first round observed."""
        self.at_start = list(findings)

    def observe(self, view: RoundView) -> list[Flag]:
        """The round's flags, with the action the policy takes for each error flag."""
        start = [self._flag(code, view, site, **evidence)
                 for code, site, evidence in self.at_start]
        self.at_start = []
        found = (start + self._updates(view) + self._participation(view) + self._scores(view)
                 + self._loss(view) + self._privacy(view))
        return [self._act(flag) for flag in found]

    def _flag(self, code: str, view: RoundView, site: str | None, **evidence: float | str) -> Flag:
        # evidence goes into a signed JSON record: non-finite numbers travel as text
        return Flag(code, self.config.severity_of(code), view.round, site,
                    {k: (round(v, 6) if np.isfinite(v) else str(v)) if isinstance(v, float)
                     else v for k, v in evidence.items()})

    def _act(self, flag: Flag) -> Flag:
        if rank(flag.severity) < rank("error") or self.config.on_error == "warn":
            return flag
        if self.config.on_error == "exclude_site" and flag.site is not None:
            self.excluded.setdefault(flag.site, flag.code)
            return Flag(**{**flag.to_dict(), "action": "site excluded for the rest of the run"})
        if self.config.on_error == "stop" and self.stop_reason is None:
            self.stop_reason = (f"monitor flag {flag.code} (round {flag.round}"
                                f"{', site ' + flag.site if flag.site else ''})")
        return Flag(**{**flag.to_dict(), "action": "run stopped"})

    def _updates(self, view: RoundView) -> list[Flag]:
        if self.secagg or view.norms is None or not len(view.site_ids):
            return []
        cfg, flags = self.config, []
        norms = np.asarray(view.norms, dtype=np.float64)
        logs = np.log(np.maximum(norms, 1e-30))
        peers = float(np.median(norms))
        for i in np.flatnonzero(norms < cfg.free_ride_ratio * peers):
            flags.append(self._flag("free_rider", view, view.site_ids[i], norm=float(norms[i]),
                                    peers_median=peers, threshold=cfg.free_ride_ratio))
        if len(norms) >= 5:
            # one-sided: a small site's few local steps give a small norm (not a threat: a
            # near-zero one is the free rider's); poisoning by scale or noise is large
            z_peer = robust_z(logs, logs) * np.sign(logs - np.median(logs))
            for i in np.flatnonzero(z_peer > cfg.norm_z):
                site, history = view.site_ids[i], self.norms[view.site_ids[i]]
                z_own = float(robust_z(logs[i:i + 1], np.array(history))[0]) if len(history) >= 3 \
                    else float("inf")
                if z_own > cfg.norm_z and norms[i] >= cfg.free_ride_ratio * peers:
                    flags.append(self._flag("update_norm_outlier", view, site,
                                            norm=float(norms[i]), z_peers=float(z_peer[i]),
                                            z_own=z_own if np.isfinite(z_own) else "no history",
                                            threshold=cfg.norm_z))
        if view.cosines is not None and len(view.cosines) >= 5:
            # opposed, and an outlier among this round's peers: how aligned honest sites
            # are differs by task (under strong skew many honest cosines sit near zero)
            cos = np.asarray(view.cosines, dtype=np.float64)
            center = float(np.median(cos))
            spread = max(_MAD_SCALE * float(np.median(np.abs(cos - center))), _COS_FLOOR)
            z_low = (center - cos) / spread
            for i in np.flatnonzero((cos < cfg.cosine_min) & (z_low > cfg.norm_z)):
                flags.append(self._flag("update_opposes_aggregate", view, view.site_ids[i],
                                        cosine=float(cos[i]), peers_median=center,
                                        z_peers=float(z_low[i]), threshold=cfg.cosine_min))
            # the other way: an update that is the others' aggregate (a copy of the peers,
            # e.g. "a little is enough" at z = 0) did not come from the site's own data
            for i in np.flatnonzero((cos > cfg.mimic_cosine) & (-z_low > cfg.mimic_z)):
                flags.append(self._flag("update_mimics_peers", view, view.site_ids[i],
                                        cosine=float(cos[i]), peers_median=center,
                                        z_peers=float(-z_low[i]), threshold=cfg.mimic_cosine))
        flagged = {f.site for f in flags}  # an anomalous update never becomes the baseline
        for site, value in zip(view.site_ids, logs, strict=True):
            if site not in flagged:
                self.norms[site].append(float(value))
        return flags

    def _participation(self, view: RoundView) -> list[Flag]:
        cfg, flags = self.config, []
        replied = set(view.replied)
        for site in view.sampled:
            outcome = ("dropped" if site not in replied
                       else "rejected" if site in view.rejected else "ok")
            history = self.outcomes[site]
            history.append(outcome)
            if outcome == "rejected" and list(history).count("rejected") == cfg.rejections:
                flags.append(self._flag("repeated_rejections", view, site, rejected=cfg.rejections,
                                        window=cfg.window, last_reason=view.rejected[site][:200]))
            if outcome == "dropped" and list(history).count("dropped") == cfg.dropouts:
                flags.append(self._flag("repeated_dropouts", view, site, dropped=cfg.dropouts,
                                        window=cfg.window))
        return flags

    def _scores(self, view: RoundView) -> list[Flag]:
        if not view.site_scores:
            return []
        cfg, flags = self.config, []
        for site, score in sorted(view.site_scores.items()):
            best = self.best_score.get(site)
            if best is not None and score < best - cfg.metric_drop:
                if site not in self.dropping:
                    self.dropping.add(site)
                    flags.append(self._flag("site_metric_drop", view, site, score=score,
                                            best=best, threshold=cfg.metric_drop))
            else:
                self.dropping.discard(site)
            self.best_score[site] = score if best is None else max(best, score)
        scores = np.array(list(view.site_scores.values()))
        if len(scores) >= 2:
            worst = min(view.site_scores, key=lambda s: (view.site_scores[s], s))
            gap = float(scores.mean() - scores.min())
            # "falling further behind": a wide gap, grown clearly beyond the narrowest seen
            # (early rounds' gaps move by a few points either way)
            least = self.least_gap
            wide = gap > cfg.fairness_gap and least is not None and gap > least + cfg.gap_growth
            if wide and not self.gap_open:
                flags.append(self._flag("fairness_gap", view, worst, gap=gap,
                                        worst=float(scores.min()), mean=float(scores.mean()),
                                        narrowest=least, threshold=cfg.fairness_gap))
            self.gap_open = wide or (self.gap_open and gap > cfg.fairness_gap)
            self.least_gap = gap if least is None else min(least, gap)
        return flags

    def _loss(self, view: RoundView) -> list[Flag]:
        if view.loss is None:
            return []
        loss = float(view.loss)
        if not np.isfinite(loss):
            return [self._flag("loss_diverging", view, None, loss=str(loss))]
        best = self.best_loss
        self.best_loss = loss if best is None else min(best, loss)
        if best is not None and best > 0 and loss > self.config.divergence * best:
            return [self._flag("loss_diverging", view, None, loss=loss, best=best,
                               threshold=self.config.divergence)]
        return []

    def _privacy(self, view: RoundView) -> list[Flag]:
        flags = [self._flag("site_privacy_refusal", view, site) for site in view.privacy_refusals]
        spent = view.budget_fraction
        if spent is not None and spent >= self.config.budget_fraction and not self.budget_flagged:
            self.budget_flagged = True
            flags.append(self._flag("budget_nearly_spent", view, None, spent=float(spent),
                                    threshold=self.config.budget_fraction))
        return flags

    def applicable_codes(self) -> list[str]:
        """Codes this run can raise (SecAgg+ rules out the update flags)."""
        from .flags import CODES, DRIFT_CODES

        return [c for c in CODES if not (self.secagg and c in UPDATE_CODES)
                and (self.config.drift or c not in DRIFT_CODES)]

"""Flags: what the run's monitor says went wrong, and the ``[monitor]`` settings that tune it.

Contract: a `Flag` is one finding of one round: a ``code`` from `CODES`, a severity
(``info`` < ``warning`` < ``error``), the site it is about (None: the federation), the
evidence (numbers, and the threshold they crossed) and the action the run took. Flags are
plain dicts in lineage (each round record's ``extra["flags"]``), so `fedsilo monitor`, the
model card and the MLflow export read them from the verified chain alone.

`MonitorConfig.from_dict` validates ``[monitor]`` once at the boundary: an unknown key,
code, severity or policy is a one-line `MonitorConfigError` naming the option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedsilo.common.errors import FedsiloError

SEVERITIES = ("info", "warning", "error")
"""Severities, least to most severe."""

CODES: dict[str, tuple[str, str]] = {
    "update_norm_outlier": ("warning", "update norm far from the site's own history and its peers"),
    "update_opposes_aggregate": ("warning", "update direction opposed to the round's aggregate"),
    "free_rider": ("error", "near-zero update: the site returned (almost) the global model"),
    "repeated_rejections": ("error", "the site's replies were screened out repeatedly"),
    "site_metric_drop": ("warning", "the global model got worse at this site than its best"),
    "fairness_gap": ("warning", "the worst site fell further behind the sites' mean"),
    "loss_diverging": ("error", "the global loss is non-finite or far above its best"),
    "budget_nearly_spent": ("warning", "most of the run's privacy budget is spent"),
    "site_privacy_refusal": ("warning", "a site refused a round under its own privacy ceiling"),
    "repeated_dropouts": ("warning", "the site dropped out or timed out repeatedly"),
}
"""Every flag code: (default severity, what it means)."""

UPDATE_CODES = frozenset({"update_norm_outlier", "update_opposes_aggregate", "free_rider"})
"""Codes that need each site's individual update: they do not apply under SecAgg+."""

POLICIES = ("warn", "exclude_site", "stop")


class MonitorConfigError(FedsiloError, ValueError):
    """A ``[monitor]`` setting that cannot be used (one line: the option and what is expected)."""


def rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Flag:
    """One finding (see the module docstring)."""

    code: str
    severity: str
    round: int
    site: str | None
    evidence: dict[str, float | str]
    action: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of the monitor (``[monitor]`` in the run config); defaults documented in
    ``docs/governance.md``.

    Attributes:
        enabled: compute flags every round.
        on_error: what an ``error`` flag does: ``warn`` (record only), ``exclude_site``
            (the site's updates are left out for the rest of the run) or ``stop`` (the run
            closes cleanly, naming the flag).
        norm_z: robust z-score (median/MAD) above which a site is an outlier: its log
            update norm against its peers this round and its own history (both), and its
            cosine below its peers' (with ``cosine_min``).
        cosine_min: cosine between a site's update and the other sites' aggregate below
            which the update opposes it (when it is also more than ``norm_z`` robust
            z-scores below its peers' cosines).
        free_ride_ratio: update norm / the peers' median norm below which an update is
            near-zero.
        window: sampled rounds of a site looked back on for rejections and dropouts.
        rejections: rejected replies within ``window`` that raise ``repeated_rejections``.
        dropouts: missed replies within ``window`` that raise ``repeated_dropouts``.
        metric_drop: fall of a site's score (per-site evaluation) below its best.
        fairness_gap: sites' mean score minus the worst site's, above which ``fairness_gap``
            is raised when the gap also grew by more than ``gap_growth`` over the narrowest
            gap of the run so far (once, until the gap closes below the threshold again).
        gap_growth: see ``fairness_gap``.
        divergence: the global loss above this multiple of its best raises ``loss_diverging``.
        budget_fraction: share of the DP budget spent that raises ``budget_nearly_spent``.
        severity: per-code severity overrides, code -> ``info`` | ``warning`` | ``error``.
    """

    enabled: bool = True
    on_error: str = "warn"
    norm_z: float = 4.0
    cosine_min: float = 0.0
    free_ride_ratio: float = 1e-3
    window: int = 5
    rejections: int = 3
    dropouts: int = 3
    metric_drop: float = 0.15
    fairness_gap: float = 0.25
    gap_growth: float = 0.1
    divergence: float = 3.0
    budget_fraction: float = 0.8
    severity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> MonitorConfig:
        """Validate ``[monitor]`` (see the class docstring); raises `MonitorConfigError`."""
        raw = dict(raw or {})
        known = {f.name: f for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise MonitorConfigError(f"monitor.{key}: unknown option (expected one of "
                                         f"{', '.join(sorted(known))})")
        severity = raw.pop("severity", {}) or {}
        if not isinstance(severity, dict):
            raise MonitorConfigError("monitor.severity: expected a table code -> severity")
        for code, level in severity.items():
            if code not in CODES:
                raise MonitorConfigError(f"monitor.severity.{code}: unknown flag code (expected "
                                         f"one of {', '.join(CODES)})")
            if level not in SEVERITIES:
                raise MonitorConfigError(f"monitor.severity.{code}: unknown severity {level!r} "
                                         f"(expected info, warning or error)")
        if raw.get("on_error", "warn") not in POLICIES:
            raise MonitorConfigError(f"monitor.on_error: {raw['on_error']!r} is not a policy "
                                     "(expected warn, exclude_site or stop)")
        for key, value in raw.items():
            default = known[key].default
            if isinstance(default, bool) != isinstance(value, bool) or (
                    isinstance(default, int | float) and not isinstance(value, int | float)):
                raise MonitorConfigError(f"monitor.{key}: expected a "
                                         f"{type(default).__name__}, got {value!r}")
        return cls(**raw, severity=dict(severity))

    def severity_of(self, code: str) -> str:
        return self.severity.get(code, CODES[code][0])

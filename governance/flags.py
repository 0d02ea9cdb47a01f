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
    "update_mimics_peers": ("warning", "update (almost) the other sites' aggregate: not from "
                            "the site's own data"),
    "repeated_rejections": ("error", "the site's replies were screened out repeatedly"),
    "site_metric_drop": ("warning", "the global model got worse at this site than its best"),
    "fairness_gap": ("warning", "the worst site fell further behind the sites' mean"),
    "loss_diverging": ("error", "the global loss is non-finite or far above its best"),
    "budget_nearly_spent": ("warning", "most of the run's privacy budget is spent"),
    "site_privacy_refusal": ("warning", "a site refused a round under its own privacy ceiling"),
    "repeated_dropouts": ("warning", "the site dropped out or timed out repeatedly"),
    "data_drift": ("warning", "the site's features moved from its profile in the baseline run"),
    "label_shift": ("warning", "the site's labels moved from its profile in the baseline run"),
    "site_data_atypical": ("info", "the site's features differ from the rest of the federation's"),
}
"""Every flag code: (default severity, what it means)."""

UPDATE_CODES = frozenset({"update_norm_outlier", "update_opposes_aggregate", "free_rider",
                          "update_mimics_peers", "site_data_atypical"})
"""Codes that need each site's individual update or data profile: they do not apply under
SecAgg+ (drift against the baseline is then the federation's, with no site)."""
DRIFT_CODES = frozenset({"data_drift", "label_shift", "site_data_atypical"})
"""Codes of the drift check at the start of a run (`fedsilo.governance.drift`)."""

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
        mimic_cosine: cosine to the other sites' aggregate above which an update may copy
            them (``update_mimics_peers``, when it is also more than ``mimic_z`` robust
            z-scores above its peers' cosines: under IID data every site is that aligned).
        mimic_z: see ``mimic_cosine``.
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
        drift: profile every site's data at the start (tasks that define
            `fedsilo.tasks.Task.data_profile`) and check it for drift.
        baseline: run directory of an earlier run of the same task whose profiles the
            sites' are compared with (``--baseline``; empty: none).
        drift_psi: PSI of a feature against the site's baseline profile from which it drifts
            (when the two samples also differ beyond sampling noise, ``drift_alpha``).
        label_tv: total variation of the labels against the baseline from which they shift.
        federation_psi: PSI of a feature against the rest of the federation above which a
            site's data is atypical (info), when its labels do not differ significantly
            from the rest's (``drift_alpha``; else label skew explains the difference).
        drift_alpha: significance level of the drift tests (Bonferroni over features).
    """

    enabled: bool = True
    on_error: str = "warn"
    norm_z: float = 4.0
    cosine_min: float = 0.0
    free_ride_ratio: float = 1e-3
    mimic_cosine: float = 0.95
    mimic_z: float = 3.0
    window: int = 5
    rejections: int = 3
    dropouts: int = 3
    metric_drop: float = 0.15
    fairness_gap: float = 0.25
    gap_growth: float = 0.1
    divergence: float = 3.0
    budget_fraction: float = 0.8
    severity: dict[str, str] = field(default_factory=dict)
    drift: bool = True
    baseline: str = ""
    drift_psi: float = 0.25
    label_tv: float = 0.1
    federation_psi: float = 1.0
    drift_alpha: float = 0.01

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
                    isinstance(default, int | float) and not isinstance(value, int | float)) or (
                    isinstance(default, str) and not isinstance(value, str)):
                raise MonitorConfigError(f"monitor.{key}: expected a "
                                         f"{type(default).__name__}, got {value!r}")
        return cls(**raw, severity=dict(severity))

    def severity_of(self, code: str) -> str:
        return self.severity.get(code, CODES[code][0])

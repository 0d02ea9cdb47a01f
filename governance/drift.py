"""Data drift without moving data: each site's data profile against a baseline and the federation.

Contract: `drift_findings` takes the profiles the server holds at the start of a run
(`fedsilo.tasks.profile`: row count, per-feature histograms on the task's bins, label
counts), per site or, under SecAgg+, only their sum, and returns ``(code, site, evidence)``
triples for `fedsilo.governance.monitor.Monitor` to raise in the first round:

* ``data_drift``: a site's features against its own profile in the baseline run (PSI);
* ``label_shift``: a site's labels against its baseline profile (total variation);
* ``site_data_atypical``: a site's features against the rest of the federation (PSI),
  when its labels are like the rest's (under label skew, features differ with the labels:
  a site whose labels differ significantly from the rest's is not compared).

Under SecAgg+ the site is None and the federation's summed profile is compared with the
baseline's. A feature drifts when its population stability index (PSI, the symmetric
Kullback-Leibler divergence of the two histograms, `scipy.special.rel_entr`) reaches the
threshold *and* the two samples differ beyond sampling noise: ``n1 n2 / (n1 + n2) * PSI``
is approximately chi-square with (bins - 1) degrees of freedom when both come from one
distribution, so its p-value (`scipy.stats.chi2`) must be below ``drift_alpha`` divided by
the number of features (Bonferroni). Labels shift when their total variation reaches
``label_tv`` and the chi-square test of homogeneity (`scipy.stats.chi2_contingency`)
rejects at ``drift_alpha``. All features of all sites are tested as whole arrays.

A profile released under DP (`fedsilo.privacy.profile_release`: client-level or
record-level) carries its noise's variance (``profile.noise``); for a pair where either side does, the gate is a
Wald test instead, whose variance adds that noise to the sampling variance (`wald_pvalues`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import special, stats

from .flags import MonitorConfig
from .profile_names import FEATURES, LABELS, NOISE, PREFIX, ROWS

__all__ = ["FEATURES", "LABELS", "NOISE", "PREFIX", "ROWS", "drift_findings", "feature_drift",
           "frequencies", "label_drift", "label_pvalues", "psi", "psi_pvalues",
           "total_variation", "wald_pvalues"]

Profile = Mapping[str, np.ndarray]
Finding = tuple[str, "str | None", dict[str, float | str]]

SMOOTHING = 0.5
"""Added to every bin before normalising (an empty bin would make PSI infinite)."""


def frequencies(counts: np.ndarray) -> np.ndarray:
    """Smoothed bin frequencies along the last axis."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 0.0) + SMOOTHING
    return counts / counts.sum(axis=-1, keepdims=True)


def psi(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Population stability index of each row of ``counts`` against ``reference`` (same shape)."""
    p, q = frequencies(counts), frequencies(reference)
    return (special.rel_entr(p, q) + special.rel_entr(q, p)).sum(axis=-1)


def psi_pvalues(values: np.ndarray, n1: np.ndarray, n2: np.ndarray, bins: np.ndarray
                ) -> np.ndarray:
    """p-value of each PSI (..., F) under "one distribution" (see the module docstring);
    ``n1``, ``n2``: the two samples' rows (..., 1); ``bins``: bins used by either sample."""
    n1, n2 = np.asarray(n1, dtype=np.float64), np.asarray(n2, dtype=np.float64)
    both = (n1 > 0) & (n2 > 0)
    scale = np.divide(n1 * n2, n1 + n2, out=np.zeros_like(n1 * n2), where=both)
    return np.where(both, stats.chi2.sf(values * scale, np.maximum(bins - 1, 1)), 1.0)


def total_variation(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Half the L1 distance of normalised histograms along the last axis (0: same, 1:
    disjoint; 0 where either is empty)."""
    p, q = (np.asarray(c, dtype=np.float64) for c in (counts, reference))
    sp, sq = p.sum(-1, keepdims=True), q.sum(-1, keepdims=True)
    ok = (sp > 0) & (sq > 0)
    tv = 0.5 * np.abs(np.divide(p, sp, out=np.zeros_like(p), where=ok)
                      - np.divide(q, sq, out=np.zeros_like(q), where=ok)).sum(-1)
    return np.where(ok[..., 0], tv, 0.0)


def label_pvalues(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pearson's chi-square test of homogeneity of two label histograms along the last
    axis (the statistic `scipy.stats.chi2_contingency` computes without continuity
    correction, over the classes seen by either; 1 when fewer than 2 are, or one is empty)."""
    table = np.stack([counts, reference], axis=-2).astype(np.float64)  # (..., 2, C)
    rows, cols = table.sum(-1, keepdims=True), table.sum(-2, keepdims=True)
    total = rows.sum(-2, keepdims=True)
    expected = np.divide(rows * cols, total, out=np.zeros_like(table), where=total > 0)
    cells = np.divide((table - expected) ** 2, expected, out=np.zeros_like(table),
                      where=expected > 0)
    seen = (cols[..., 0, :] > 0).sum(-1)
    valid = (seen >= 2) & (rows[..., 0] > 0).all(-1)
    return np.where(valid, stats.chi2.sf(cells.sum((-2, -1)), np.maximum(seen - 1, 1)), 1.0)


def wald_pvalues(counts: np.ndarray, reference: np.ndarray, rows: np.ndarray,
                 ref_rows: np.ndarray, noise: np.ndarray, ref_noise: np.ndarray) -> np.ndarray:
    """p-value of "one distribution" for histograms along the last axis whose counts carry
    Gaussian noise of variance ``noise`` per count: the sum over bins of the squared
    frequency difference over its variance (multinomial sampling at the pooled frequency,
    plus each side's noise over its rows squared), against a chi-square with one degree
    of freedom per bin. ``rows``, ``noise`` broadcast to ``counts[..., :1]``."""
    n1, n2 = (np.maximum(np.asarray(r, dtype=np.float64), 1.0) for r in (rows, ref_rows))
    p, q = np.asarray(counts, dtype=np.float64) / n1, np.asarray(reference, np.float64) / n2
    pooled = np.clip((p * n1 + q * n2) / (n1 + n2), 0.0, 1.0)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2) + noise / n1**2 + ref_noise / n2**2
    terms = np.divide((p - q) ** 2, var, out=np.zeros_like(p), where=var > 0)
    return stats.chi2.sf(terms.sum(-1), p.shape[-1])


def _stack(profiles: list[Profile], name: str) -> np.ndarray:
    return np.stack([np.asarray(p[name], dtype=np.float64) for p in profiles])


def _noisy_pvalues(pvalues: np.ndarray, now: list[Profile], before: list[Profile],
                   name: str) -> np.ndarray:
    """``pvalues`` with the pairs where either profile is noisy (DP) tested by `wald_pvalues`."""
    noise, ref_noise = ([np.asarray(p.get(NOISE, [0.0]), np.float64) for p in ps]
                        for ps in (now, before))
    noise, ref_noise = np.stack(noise), np.stack(ref_noise)  # (S, 1)
    noisy = (noise + ref_noise)[:, 0] > 0
    if not noisy.any():
        return pvalues
    extra = (1,) * (np.ndim(now[0][name]) - 1)  # rows, noise against (S, ..., B)
    rows, ref_rows = (_stack(ps, ROWS).reshape(-1, *extra, 1) for ps in (now, before))
    wald = wald_pvalues(_stack(now, name), _stack(before, name), rows, ref_rows,
                        noise.reshape(-1, *extra, 1), ref_noise.reshape(-1, *extra, 1))
    return np.where(noisy.reshape(-1, *extra), wald, pvalues)


def feature_drift(now: list[Profile], before: list[Profile], threshold: float, alpha: float
                  ) -> list[dict[str, float | str] | None]:
    """Per pair (now[i], before[i]): the evidence of features drifting, or None."""
    counts, ref = _stack(now, FEATURES), _stack(before, FEATURES)  # (S, F, B)
    values = psi(counts, ref)
    used = ((counts > 0) | (ref > 0)).sum(-1)
    pvalues = _noisy_pvalues(psi_pvalues(values, _stack(now, ROWS), _stack(before, ROWS), used),
                             now, before, FEATURES)
    drifting = (values >= threshold) & (pvalues < alpha / max(values.shape[-1], 1))
    worst = np.argmax(np.where(drifting, values, -np.inf), axis=-1)
    return [None if not drifting[i].any() else {
        "features_drifting": int(drifting[i].sum()), "features": int(values.shape[-1]),
        "worst_feature": int(worst[i]), "psi": float(values[i, worst[i]]),
        "p_value": float(pvalues[i, worst[i]]), "threshold": threshold}
        for i in range(len(now))]


def label_drift(now: list[Profile], before: list[Profile], threshold: float, alpha: float
                ) -> list[dict[str, float | str] | None]:
    """Per pair: the evidence of the label distribution moving, or None."""
    if not now or any(LABELS not in p for p in now + before):
        return [None] * len(now)
    counts, ref = _stack(now, LABELS), _stack(before, LABELS)
    tv = total_variation(counts, ref)
    p = _noisy_pvalues(label_pvalues(counts, ref), now, before, LABELS)
    return [None if tv[i] < threshold or p[i] >= alpha else
            {"total_variation": float(tv[i]), "p_value": float(p[i]), "threshold": threshold}
            for i in range(len(now))]


def drift_findings(sites: Mapping[str, Profile] | None, federation: Profile,
                   baseline: Mapping[str, Any] | None, config: MonitorConfig) -> list[Finding]:
    """The run's drift findings (see the module docstring). ``baseline``: the baseline
    run's ``sites`` (site -> profile) and ``federation`` profile, with its ``run_id``."""
    found: list[Finding] = []
    if baseline:
        against = {"baseline_run": str(baseline["run_id"])}
        if sites is None:  # SecAgg+: only the federation's sum
            names, now, before = [None], [federation], [baseline["federation"]]
        else:
            names = [s for s in sorted(sites) if s in baseline["sites"]]
            now, before = [sites[s] for s in names], [baseline["sites"][s] for s in names]
        for code, test, threshold in (("data_drift", feature_drift, config.drift_psi),
                                      ("label_shift", label_drift, config.label_tv)):
            for site, evidence in zip(names, test(now, before, threshold, config.drift_alpha),
                                      strict=True):
                if evidence is not None:
                    found.append((code, site, {**evidence, **against}))
    if sites is None or len(sites) < 2:
        return sorted(found, key=_order)
    names = sorted(sites)
    now = [sites[s] for s in names]
    rest = [{k: np.asarray(federation[k]) - np.asarray(v) for k, v in p.items()} for p in now]
    # features follow labels: a site with other labels than the rest (label skew, the
    # normal non-IID case) has other features too; only features its labels do not
    # explain make it atypical
    skewed = label_pvalues(_stack(now, LABELS), _stack(rest, LABELS)) < config.drift_alpha \
        if all(LABELS in p for p in now) else np.zeros(len(now), dtype=bool)
    evidence = feature_drift(now, rest, config.federation_psi, config.drift_alpha)
    found += [("site_data_atypical", site, {**e, "against": "federation"})
              for site, e, skew in zip(names, evidence, skewed, strict=True)
              if e is not None and not skew]
    return sorted(found, key=_order)


def _order(finding: Finding) -> tuple[str, str]:
    """Findings by site, then code (one site's flags together, as before)."""
    return (finding[1] or "", finding[0])

"""The run's drift check on the server: the sites' data profiles, their genesis record, findings.

When the run's task profiles its data (`fedsilo.tasks.Task.data_profile`) and the monitor's
``drift`` is on, the server asks for the profiles in the federation record (`request`):

* plain runs: ``profile = "handshake"``: each site's handshake reply carries its profile
  (`fedsilo.server.handshake` decodes it into `SiteInfo.profile`);
* SecAgg+ runs: ``profile = "secure"``: each site adds its profile to its federated
  statistics, summed under SecAgg+ (`fedsilo.server.task_round.query_statistics`); the
  server sees the federation's sum only.

`collect` checks the profiles (one layout for all: a site whose profile does not fit is
left out of the check, with a note), sums them, compares them with the baseline's
(`fedsilo.governance.drift.drift_findings`) and returns the genesis record's
``task["data_profiles"]`` and the findings the monitor raises in round 1.

Under record-level DP (``[record_dp]``) each site adds Gaussian noise to its profile
before it leaves (``profile_record_noise``; `fedsilo.privacy.profile_release.local_release`);
the profiles carry their noise's variance, which the drift test adds to the sampling
variance, and the check runs per site as without DP.

Under client-level DP (``[dp]``) no site's profile is recorded or compared: the sites'
profiles in frequencies (SecAgg+ sites send them so: ``profile_form = "frequencies"``)
are summed with Gaussian noise once (`fedsilo.privacy.profile_release`), the run's
accountant composes that release, and the federation's noisy profile is compared with
the baseline's (flags without a site).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedsilo.governance.baseline import profile_lists, profiles_lists
from fedsilo.governance.drift import FEATURES, NOISE, ROWS, drift_findings
from fedsilo.governance.flags import MonitorConfig
from fedsilo.server.spec import SiteInfo

Profile = dict[str, np.ndarray]


def request(profile: bool, secagg: bool, private: bool = False,
            record_noise: float | None = None) -> dict[str, str | float]:
    """The federation record's ``profile`` entry: how sites send their profile ({}: not
    asked); ``private``: client-level DP, where SecAgg+ sites send it in frequencies;
    ``record_noise``: record-level DP, each site noises its profile at this multiplier."""
    if not profile:
        return {}
    form = {"profile_form": "frequencies"} if private and secagg else {}
    noise = {"profile_record_noise": float(record_noise)} if record_noise is not None else {}
    return {"profile": "secure" if secagg else "handshake", **form, **noise}


def _layout(profile: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, tuple(np.shape(v))) for k, v in profile.items()))


def usable(sites: Sequence[SiteInfo]) -> tuple[dict[str, Profile], list[str]]:
    """(site id -> profile of the sites whose profile fits the first's layout, notes on the
    others). A profile needs ``rows`` (1,) and ``features`` (F, B), counts >= 0."""
    found: dict[str, Profile] = {}
    notes: list[str] = []
    layout = None
    for site in sites:
        p = site.profile
        if p is None:
            notes.append(f"drift: site {site.site_id} sent no data profile")
            continue
        # finite and >= 0 (NaN fails the comparison)
        ok = (ROWS in p and FEATURES in p and np.shape(p[ROWS]) == (1,)
              and np.ndim(p[FEATURES]) == 2
              and all(bool((np.asarray(v) >= 0).all() and np.isfinite(v).all())
                      for v in p.values()))
        if ok and layout is None:
            layout = _layout(p)
        if not ok or _layout(p) != layout:
            notes.append(f"drift: site {site.site_id}'s data profile does not fit the others' "
                         "(left out of the drift check)")
            continue
        found[site.site_id] = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
    return found, notes


def total(profiles: Mapping[str, Profile]) -> Profile:
    """The federation's profile: the sites' summed array by array."""
    names = next(iter(profiles.values())).keys()
    return {k: np.sum([p[k] for p in profiles.values()], axis=0) for k in names}


def collect(sites: Sequence[SiteInfo], secure_sum: Profile | None,
            baseline: Mapping[str, Any] | None, config: MonitorConfig, dp: Any = None,
            record_noise: float | None = None,
            ) -> tuple[dict[str, Any] | None, list[tuple[str, str | None, dict[str, Any]]]]:
    """(genesis ``data_profiles`` record, findings) of a new run (see the module docstring);
    (None, []) when no usable profile arrived. ``dp``: the run's `ClientLevelDP`, if any;
    ``record_noise``: the sites noised their profiles at this multiplier (record-level DP)."""
    if dp is not None:
        return _collect_private(sites, secure_sum, baseline, config, dp)
    if secure_sum is not None:  # SecAgg+: the federation's sum, no site's profile
        per_site, notes, federation = None, [], secure_sum
    else:
        per_site, notes = usable(sites)
        if not per_site:
            return None, []
        federation = total(per_site)
    findings = drift_findings(per_site, federation, baseline, config)
    record: dict[str, Any] = {"summed": "clear" if per_site is not None else "secagg+",
                              "federation": profile_lists(federation)}
    if per_site is not None:
        record["sites"] = profiles_lists(per_site)
    if record_noise is not None:
        record["record_dp"] = {"mechanism": "gaussian, added at each site",
                               "noise_multiplier": record_noise}
    return _with_baseline_and_notes(record, baseline, notes), findings


def _with_baseline_and_notes(record: dict[str, Any], baseline: Mapping[str, Any] | None,
                             notes: list[str]) -> dict[str, Any]:
    if baseline:
        record["baseline"] = {"run_id": baseline["run_id"], "chain_head": baseline["chain_head"]}
    if notes:
        record["notes"] = notes
    return record


def _collect_private(sites: Sequence[SiteInfo], secure_sum: Profile | None,
                     baseline: Mapping[str, Any] | None, config: MonitorConfig, dp: Any,
                     ) -> tuple[dict[str, Any] | None, list[tuple[str, str | None, dict[str, Any]]]]:
    """`collect` under client-level DP: one noisy release of the summed frequencies."""
    from fedsilo.privacy.profile_release import release
    from fedsilo.tasks.profile import frequency_profile

    def histograms(p: Mapping[str, np.ndarray]) -> Profile:
        # a record-level DP site's own noise variance is not a histogram: left out here
        return {k: np.asarray(v) for k, v in p.items() if k != NOISE}

    notes: list[str] = []
    if secure_sum is not None:
        secure_sum = histograms(secure_sum)
        contributions, count = None, int(round(float(secure_sum[ROWS][0])))
    else:
        per_site, notes = usable(sites)
        contributions = [frequency_profile(histograms(p)) for p in per_site.values()]
        count = len(contributions)
    if count < 1:
        return None, []
    z = dp.config.profile_noise_multiplier
    federation, variance = release(contributions, secure_sum, z, dp.noise.normal)
    dp.accountant.release(z)
    federation[ROWS], federation[NOISE] = np.array([float(count)]), np.array([variance])
    record: dict[str, Any] = {
        "summed": "secagg+" if secure_sum is not None else "clear",
        "federation": profile_lists(federation),
        "dp": {"mechanism": "gaussian", "noise_multiplier": z, "noise_stddev": variance ** 0.5,
               "sites": count, "accountant": dp.accountant.name,
               "epsilon_after": dp.accountant.get_epsilon(), "delta": dp.config.delta}}
    return (_with_baseline_and_notes(record, baseline, notes),
            drift_findings(None, federation, baseline, config))

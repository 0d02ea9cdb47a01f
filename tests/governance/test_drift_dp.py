"""The drift check under client-level DP (issue 23, point 2): the federation's noisy
profile, its test against a baseline, and real runs that release it and pay for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.cli import run_cli

from fedsilo import lineage
from fedsilo.governance.drift import FEATURES, NOISE, ROWS, drift_findings
from fedsilo.governance.flags import MonitorConfig
from fedsilo.privacy.accounting import ClientLevelAccountant
from fedsilo.privacy.profile_release import bound, release
from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.runner import run_federation
from fedsilo.tasks.profile import frequency_profile, histogram_profile

ZP = 5.0


def _released(rng: np.random.Generator, sites: int, shift: float = 0.0) -> dict[str, Any]:
    """The noisy federation profile of ``sites`` sites of 50 rows and 13 features."""
    freqs = [frequency_profile(histogram_profile(rng.normal(shift, 1.0, (50, 13)),
                                                 rng.integers(0, 3, 50), 3))
             for _ in range(sites)]
    total, variance = release(freqs, None, ZP, lambda s, n: rng.normal(0.0, s, n))
    return {**total, ROWS: np.array([float(sites)]), NOISE: np.array([variance])}


def _findings(now: dict[str, Any], before: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return drift_findings(None, now, {"run_id": "b", "sites": {}, "federation": before},
                          MonitorConfig())


def test_two_releases_of_one_distribution_are_not_drift():
    rng = np.random.default_rng(0)
    flagged = [_findings(_released(rng, 500), _released(rng, 500)) for _ in range(30)]
    assert sum(bool(f) for f in flagged) <= 1  # 30 runs x 13 features + labels at alpha 0.01


def test_a_shift_of_every_site_is_found_with_enough_sites_and_drowned_with_few():
    rng = np.random.default_rng(1)
    found = _findings(_released(rng, 2000, shift=0.5), _released(rng, 2000))
    assert [(code, site) for code, site, _ in found] == [("data_drift", None)]
    assert found[0][2]["features_drifting"] >= 5  # a 0.5 std shift: PSI ~0.25-0.3 a feature
    # ten sites: the noise (std 19 per count, against ~1 per bin) hides the same shift
    assert _findings(_released(rng, 10, shift=0.5), _released(rng, 10)) == []


def test_against_a_clear_baseline_the_clear_side_adds_only_its_sampling_noise():
    rng = np.random.default_rng(2)
    clear = [histogram_profile(rng.normal(0.0, 1.0, (50, 13)), rng.integers(0, 3, 50), 3)
             for _ in range(2000)]
    before = {k: np.sum([p[k] for p in clear], axis=0) for k in clear[0]}
    assert _findings(_released(rng, 2000), before) == []
    assert [c for c, _, _ in _findings(_released(rng, 2000, shift=0.5), before)] == ["data_drift"]


# ------------------------------------------------------------------ in real runs
def _run(base: Path, run_id: str, **options: Any) -> Any:
    config = SimulationConfig.load(None, {
        "task": "breast_cancer", "sites": 5, "rounds": 2, "seed": 0, "out": str(base),
        "run_id": run_id, "task_options": {"partition": "iid"},
        "dp": {"enabled": True, "noise_multiplier": 1.0, "profile_noise_multiplier": ZP},
        **options})
    return run_federation(config, engine="inprocess")


def _dp_record(run: Any) -> dict[str, Any]:
    return lineage.read_chain(run.run_dir / "lineage.sqlite")[0]["body"]["task"]["data_profiles"]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _run(tmp_path_factory.mktemp("dpdrift"), "dpbase")


def test_a_dp_run_records_only_the_noisy_sum_and_its_budget_pays_for_it(dp_run: Any):
    record = _dp_record(dp_run)
    assert "sites" not in record and record["summed"] == "clear"
    assert record["federation"][ROWS] == [5]
    limit = bound(frequency_profile({ROWS: np.ones(1), FEATURES: np.ones((30, 10)),
                                     "profile.labels": np.ones(2)}))
    assert limit == np.sqrt(32)  # 30 features, labels, rows
    assert record["dp"]["noise_stddev"] == pytest.approx(ZP * limit)
    assert record["federation"][NOISE] == [pytest.approx((ZP * limit) ** 2, abs=1e-6)]
    want = ClientLevelAccountant(noise_multiplier=1.0, sample_rate=1.0, delta=1e-5)
    want.release(ZP)
    assert record["dp"]["epsilon_after"] == pytest.approx(want.get_epsilon(), rel=1e-12)
    want.step(2)
    closing = lineage.read_chain(dp_run.run_dir / "lineage.sqlite")[-1]["body"]
    assert closing["epsilon_spent"] == pytest.approx(want.get_epsilon(), rel=1e-12)
    assert lineage.verify_run(dp_run.run_dir).ok
    code, _, _ = run_cli(["card", str(dp_run.run_dir)])
    assert code == 0 and (
        "Data drift: genesis records only the federation's profile, released once with "
        f"Gaussian noise (std {ZP * limit:.4g} per count, noise multiplier 5, 5 sites) and "
        "charged to the DP budget") in (dp_run.run_dir / "model_card.md").read_text()


def test_a_dp_run_serves_as_a_baseline_of_the_next(dp_run: Any, tmp_path: Path):
    run = _run(tmp_path, "next", monitor={"baseline": str(dp_run.run_dir)})
    record = _dp_record(run)
    assert record["baseline"]["run_id"] == "dpbase" and "dp" in record
    assert run.result.closing_reason == "completed"


def test_under_secagg_the_sites_send_frequencies_and_the_sum_is_released(tmp_path: Path):
    run = _run(tmp_path, "sa", secagg={"enabled": True},
               dp={"enabled": True, "noise_multiplier": 1.0, "where": "site",
                   "profile_noise_multiplier": ZP})
    record = _dp_record(run)
    assert record["summed"] == "secagg+" and "sites" not in record
    assert record["federation"][ROWS] == [5] and record["dp"]["sites"] == 5


# ------------------------------------------------------------------ record-level DP
@pytest.mark.parametrize("fresh_sites", [False, True], ids=["one site object", "a site per message"])
def test_record_level_each_site_noises_its_profile_and_its_accountant_pays(
        tmp_path: Path, fresh_sites: bool, monkeypatch: pytest.MonkeyPatch):
    from opacus.accountants import RDPAccountant

    from fedsilo.simulations import sites

    if fresh_sites:  # as the deployment runtime: the release comes back from context.state
        monkeypatch.setattr(sites, "_build_site", sites._build_site.__wrapped__)
    config = SimulationConfig.load(None, {
        "task": "breast_cancer", "sites": 3, "rounds": 1, "seed": 0, "out": str(tmp_path),
        "run_id": "rdp", "record_dp": {"enabled": True, "noise_multiplier": 1.0,
                                       "profile_noise_multiplier": 2.0}})
    run = run_federation(config, engine="inprocess")
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    record = chain[0]["body"]["task"]["data_profiles"]
    assert record["record_dp"] == {"mechanism": "gaussian, added at each site",
                                   "noise_multiplier": 2.0}
    assert {s: p[NOISE] for s, p in record["sites"].items()} == \
        {s: [128] for s in ("site-000", "site-001", "site-002")}  # (2 x sqrt(1 + 30 + 1))^2
    declared = {s["site_id"]: s["num_examples"] for s in chain[0]["body"]["sites"]}
    epsilon = chain[1]["body"]["privacy"]["record_level"]["site_epsilon"]
    for site, n in declared.items():
        batches = -(-n // 32)  # Poisson batches of the task's batch size, one epoch
        want = RDPAccountant()
        want.history = [(2.0, 1.0, 1), (1.0, 1 / batches, batches)]
        assert epsilon[site] == pytest.approx(want.get_epsilon(1e-5), rel=1e-9), site


def test_a_dp_baseline_without_a_profile_release_is_refused_in_one_line(dp_run: Any,
                                                                         tmp_path: Path):
    code, _, stderr = run_cli([
        "simulate", "--engine", "inprocess", "--task", "breast_cancer", "--sites", "5",
        "--rounds", "1", "--out", str(tmp_path), "--record-dp-noise-multiplier", "1",
        "--baseline", str(dp_run.run_dir)])
    assert code == 2 and stderr.strip() == (
        "fedsilo simulate: error: --baseline: a record-level DP run checks drift only when it "
        "releases its sites' data profiles, which spends budget; set "
        "--record-dp-profile-noise-multiplier ([record_dp] profile_noise_multiplier), e.g. 5")
    assert list(tmp_path.iterdir()) == []

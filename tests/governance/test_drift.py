"""Data drift without moving data (issue 23, point 2): profiles, the tests on them, and the
drift check in real runs on Flower's engine (in-process), plain and under SecAgg+."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.cli import run_cli

from fedsilo import lineage
from fedsilo.governance.drift import (
    FEATURES,
    LABELS,
    ROWS,
    drift_findings,
    label_pvalues,
    psi,
)
from fedsilo.governance.flags import DRIFT_CODES, MonitorConfig
from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.runner import run_federation
from fedsilo.simulations.scenario import malicious_sites
from fedsilo.tasks.profile import histogram_profile

SITES, SEED = 5, 0
SHIFTED = malicious_sites(SITES, 1, SEED)[0]
TASK = "breast_cancer"


# ------------------------------------------------------------------ profiles and tests
def test_histogram_profile_counts_each_value_in_its_bin():
    x = np.array([[-3.0, 0.0], [0.25, 2.0], [2.5, -0.5]])
    p = histogram_profile(x, np.array([0, 2, 2]), 3)
    want = np.zeros((2, 10))
    want[0, [0, 5, 9]] = 1  # -3 below every edge; 0 and 0.25 from edge 0; 2.5 above 2
    want[1, [5, 9, 4]] = 1  # an edge's value falls in the bin above it
    np.testing.assert_array_equal(p[FEATURES], want)
    np.testing.assert_array_equal(p[LABELS], [1, 0, 2])
    np.testing.assert_array_equal(p[ROWS], [3])


def test_psi_is_the_symmetric_kl_divergence_of_smoothed_frequencies():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 30, (4, 10)), rng.integers(0, 30, (4, 10))
    p, q = (a + 0.5) / (a + 0.5).sum(1, keepdims=True), (b + 0.5) / (b + 0.5).sum(1, keepdims=True)
    np.testing.assert_allclose(psi(a, b), ((p - q) * np.log(p / q)).sum(1), rtol=1e-12)


def test_label_test_is_scipys_chi_square_of_homogeneity_on_every_site_at_once():
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(2)
    a, b = rng.integers(1, 20, (30, 6)), rng.integers(1, 20, (30, 6))
    a[:, 0] = b[:, 0] = 0  # a class neither has: left out, as scipy requires
    want = [chi2_contingency(np.vstack([x, y])[:, 1:], correction=False).pvalue
            for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(label_pvalues(a, b), want, rtol=1e-10)


def _profile(rng: np.random.Generator, n: int, shift: float = 0.0,
             classes: int = 4) -> dict[str, np.ndarray]:
    return histogram_profile(rng.normal(shift, 1.0, (n, 16)), rng.integers(0, classes, n), 4)


def test_sampling_noise_alone_is_not_drift():
    # 60 rows: PSI of two samples of one distribution is ~0.3, above the 0.25 threshold;
    # the chi-square gate keeps it from being called drift
    config, rng = MonitorConfig(), np.random.default_rng(7)
    raw = [float(psi(_profile(rng, 60)[FEATURES], _profile(rng, 60)[FEATURES]).max())
           for _ in range(5)]
    assert min(raw) > config.drift_psi
    for seed in range(20):
        rng = np.random.default_rng(seed)
        found = drift_findings({"s": _profile(rng, 60)}, _profile(rng, 60),
                               {"run_id": "b", "sites": {"s": _profile(rng, 60)}}, config)
        assert [f for f in found if f[0] != "site_data_atypical"] == [], seed


def test_shifted_features_and_labels_are_found_on_their_site():
    rng = np.random.default_rng(3)
    before = {"a": _profile(rng, 400), "b": _profile(rng, 400)}
    now = {"a": _profile(rng, 400, shift=1.0), "b": _profile(rng, 400, classes=2)}
    federation = {k: now["a"][k] + now["b"][k] for k in now["a"]}
    found = drift_findings(now, federation, {"run_id": "b0", "sites": before}, MonitorConfig())
    codes = {(code, site) for code, site, _ in found}
    assert ("data_drift", "a") in codes and ("label_shift", "b") in codes
    assert ("label_shift", "a") not in codes
    evidence = next(e for c, s, e in found if (c, s) == ("data_drift", "a"))
    assert evidence["features_drifting"] == 16 and evidence["baseline_run"] == "b0"


# ------------------------------------------------------------------ in real runs
def _run(base: Path, run_id: str, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    # an even split: a site's ~90 rows are enough for the tests to tell drift from noise
    config = SimulationConfig.load(None, {
        "task": TASK, "sites": SITES, "rounds": 1, "seed": SEED, "out": str(base),
        "run_id": run_id, "allow_overreach": True, "task_options": {"partition": "iid"},
        **options})
    run = run_federation(config, engine="inprocess")
    return run, lineage.read_chain(run.run_dir / "lineage.sqlite")


def _drift(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for e in chain if e["type"] == "round" for f in e["body"]["extra"].get("flags", [])
            if f["code"] in DRIFT_CODES]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, chain = _run(tmp_path_factory.mktemp("drift"), "base")
    assert chain[0]["body"]["task"]["data_profiles"]["summed"] == "clear"
    return run.run_dir


def test_a_covariate_shifted_site_is_flagged_against_its_baseline(baseline: Path, tmp_path: Path):
    run, chain = _run(tmp_path, "cov", attack="covariate_shift", malicious=1,
                      monitor={"baseline": str(baseline)})
    flags = _drift(chain)
    # against its baseline, and (its labels being like the others') against the federation
    assert [(f["code"], f["site"], f["round"]) for f in flags] == [
        ("data_drift", SHIFTED, 1), ("site_data_atypical", SHIFTED, 1)]
    assert flags[0]["evidence"]["features_drifting"] == 30
    assert flags[0]["evidence"]["baseline_run"] == "base"
    record = chain[0]["body"]["task"]["data_profiles"]
    assert record["baseline"]["run_id"] == "base"
    assert lineage.verify_run(run.run_dir).ok
    code, out, _ = run_cli(["monitor", str(run.run_dir), "--fail-on", "warning"])
    assert code == 1 and f"data_drift               {SHIFTED}" in out
    code, _, _ = run_cli(["card", str(run.run_dir)])
    head = lineage.read_chain(baseline / "lineage.sqlite")[-1]["digest"]
    assert code == 0 and (
        "Data drift: genesis records each site's profile (row counts, per-feature histograms, "
        f"label counts); checked against baseline run base (chain head {head}); any finding "
        "is in Flags.") in (run.run_dir / "model_card.md").read_text()


def test_a_label_shifted_site_is_flagged(baseline: Path, tmp_path: Path):
    _, chain = _run(tmp_path, "lab", attack="label_shift", malicious=1,
                    monitor={"baseline": str(baseline)})
    shifted = [f for f in _drift(chain) if f["code"] == "label_shift"]
    assert [f["site"] for f in shifted] == [SHIFTED]
    assert shifted[0]["evidence"]["total_variation"] > 0.3


def test_the_same_data_again_is_no_drift(baseline: Path, tmp_path: Path):
    _, chain = _run(tmp_path, "again", monitor={"baseline": str(baseline)})
    assert _drift(chain) == []
    before = lineage.read_chain(baseline / "lineage.sqlite")[0]["body"]["task"]["data_profiles"]
    assert chain[0]["body"]["task"]["data_profiles"]["sites"] == before["sites"]


def test_under_secagg_only_the_federations_sum_is_seen_and_compared(baseline: Path,
                                                                     tmp_path: Path):
    # two of five sites shifted: the federation's histograms move with them (one site's
    # shift is diluted in the sum: the price of not seeing any site's profile)
    _, chain = _run(tmp_path, "sa", attack="covariate_shift", malicious=2,
                    secagg={"enabled": True},
                    monitor={"baseline": str(baseline)})
    record = chain[0]["body"]["task"]["data_profiles"]
    assert record["summed"] == "secagg+" and "sites" not in record
    before = lineage.read_chain(baseline / "lineage.sqlite")[0]["body"]["task"]["data_profiles"]
    assert record["federation"][ROWS] == before["federation"][ROWS]  # exact under SecAgg+
    assert record["federation"][LABELS] == before["federation"][LABELS]  # features moved only
    assert [(f["code"], f["site"]) for f in _drift(chain)] == [("data_drift", None)]


def _refused(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["simulate", "--engine", "inprocess", "--task", TASK,
                                    "--sites", str(SITES), "--rounds", "1", "--out", str(out),
                                    "--run-id", "x", "--quiet", *args])
    assert code == 2, (stdout, stderr)
    assert not (out / "x").exists()  # nothing written
    (line,) = stderr.strip().splitlines()
    return line


def test_bad_baselines_are_refused_in_one_line_before_anything_is_written(baseline: Path,
                                                                        tmp_path: Path):
    assert _refused(tmp_path, "--baseline", str(tmp_path / "nope")) == (
        f"fedsilo simulate: error: --baseline: {tmp_path / 'nope'}: not a run directory (no "
        "lineage.sqlite); expected the directory of an earlier run of this task")
    assert _refused(tmp_path, "--baseline", str(baseline), "--dp-epsilon", "5").startswith(
        "fedsilo simulate: error: --baseline: a client-level DP run checks drift only when it "
        "releases its sites' data profiles, which spends budget; set "
        "--dp-profile-noise-multiplier ([dp] profile_noise_multiplier), e.g. 5")
    other, _ = _run(tmp_path, "wine", task="wine", task_options={})
    assert _refused(tmp_path, "--baseline", str(other.run_dir)) == (
        f"fedsilo simulate: error: --baseline: {other.run_dir}: a run of another task (name "
        "'wine', this run's is 'breast_cancer'); expected a run of the same task and data schema")
    tampered = tmp_path / "tampered"
    shutil.copytree(baseline, tampered)
    with sqlite3.connect(tampered / "lineage.sqlite") as conn:
        (signed,) = conn.execute("SELECT signed FROM records WHERE seq = 0").fetchone()
        conn.execute("UPDATE records SET signed = ? WHERE seq = 0",
                     (signed.replace('"summed":"clear"', '"summed":"secagg+"', 1),))
    assert "its lineage chain does not verify" in _refused(tmp_path, "--baseline", str(tampered))
    off, _ = _run(tmp_path, "off", monitor={"drift": False})
    assert _refused(tmp_path, "--baseline", str(off.run_dir)).endswith(
        "its genesis holds no data profiles (a run without the drift check); expected a run "
        "with [monitor] drift on")


def test_a_profile_that_does_not_fit_the_others_is_left_out_with_a_note():
    from fedsilo.server.data_profiles import collect
    from fedsilo.server.spec import SiteInfo

    rng = np.random.default_rng(5)
    good = [SiteInfo(f"s{i}", i, "", "", "{}", profile=_profile(rng, 50)) for i in range(3)]
    odd = SiteInfo("s3", 3, "", "", "{}", profile={ROWS: np.array([5.0]),
                                                  FEATURES: np.ones((2, 3))})
    negative = SiteInfo("s4", 4, "", "", "{}", profile={**_profile(rng, 50),
                                                       ROWS: np.array([-1.0])})
    silent = SiteInfo("s5", 5, "", "", "{}")
    record, found = collect([*good, odd, negative, silent], None, None, MonitorConfig())
    assert sorted(record["sites"]) == ["s0", "s1", "s2"]
    assert record["federation"][ROWS] == [150]
    assert record["notes"] == [
        "drift: site s3's data profile does not fit the others' (left out of the drift check)",
        "drift: site s4's data profile does not fit the others' (left out of the drift check)",
        "drift: site s5 sent no data profile"]
    assert found == []


def test_a_site_whose_policy_keeps_its_profile_sends_none():
    from fedsilo.client.app import Site
    from fedsilo.client.policy import SitePolicy

    rng = np.random.default_rng(6)
    profile = _profile(rng, 10)
    asked = {"profile": "handshake"}
    sites = {name: Site(site_id=name, trainer=None, policy=policy, profile_fn=lambda: profile)
             for name, policy in (("open", SitePolicy()),
                                  ("closed", SitePolicy(share_profile=False)),
                                  ("secure", SitePolicy(require_secagg=True)))}
    assert sites["open"].profile(asked, "handshake") == profile
    assert sites["closed"].profile(asked, "handshake") is None
    assert sites["secure"].profile(asked, "handshake") is None
    assert sites["open"].profile({}, "handshake") is None  # not asked
    # under SecAgg+ the profile only enters the federation's sum, whatever the policy
    assert sites["closed"].statistics_with_profile({"profile": "secure"}) == profile

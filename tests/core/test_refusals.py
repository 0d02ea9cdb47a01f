"""Refuse what cannot hold (issue 19, point 4): more attackers than the aggregator tolerates,
and parameters that make every round impossible, are refused before the run starts.

One line naming the option and what it would need, exit 2, no run directory; with
``--allow-overreach`` the run goes ahead and its genesis record says it is outside the
aggregator's guarantee.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.server.config import ConfigError, RunConfig, SecAggSettings, overreach
from fedsilo.server.loop import FederationError, FederationServer, ServerSpec
from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.runner import check_feasible, run_federation
from fedsilo.strategies import registry

GUARANTEE = "pass --allow-overreach to run outside the aggregator's guarantee"
REFUSED = [
    # the cases of issue 19: 4 attackers of 10 sites
    (["--aggregator", "krum:f=2"],
     "--malicious: 4 attacking sites of 10 sampled exceed what --aggregator krum:f=2 "
     f"tolerates (2: f=2); {GUARANTEE}"),
    (["--aggregator", "trimmed_mean:beta=0.2"],
     "--malicious: 4 attacking sites of 10 sampled exceed what --aggregator "
     f"trimmed_mean:beta=0.2 tolerates (2: beta=0.2 cuts 2 per side); {GUARANTEE}"),
    (["--aggregator", "multi_krum:f=3"],
     "--malicious: 4 attacking sites of 10 sampled exceed what --aggregator multi_krum:f=3 "
     f"tolerates (3: f=3); {GUARANTEE}"),
    # sampling: every attacker may be among the 5 sampled sites, and median needs fewer than half
    (["--aggregator", "median", "--fraction", "0.5"],
     "--malicious: 4 attacking sites of 5 sampled exceed what --aggregator median tolerates "
     f"(2: fewer than half); {GUARANTEE}"),
]
IMPOSSIBLE = [
    (["--sites", "3", "--secagg", "--secagg-threshold", "5"],
     "--secagg-threshold: 5 exceeds the 3 holders of each site's secret with 3 sites sampled "
     "per round (--fraction 1.0 of --sites 3); round 1 could never finish"),
    (["--sites", "10", "--secagg", "--secagg-degree", "2", "--secagg-threshold", "4"],
     "--secagg-threshold: 4 exceeds the 3 holders of each site's secret with 10 sites sampled "
     "per round (--fraction 1.0 of --sites 10); round 1 could never finish"),
    (["--sites", "10", "--fraction", "0.1", "--secagg"],
     "--secagg: secure aggregation needs at least 2 sites per round; 1 site sampled per round "
     "(--fraction 0.1 of --sites 10)"),
    (["--sites", "10", "--fraction", "0.3", "--min-sites", "5"],
     "--min-sites: 5 replies needed but only 3 sites sampled per round (--fraction 0.3 of "
     "--sites 10); no round could change the model"),
]


@pytest.mark.parametrize(("argv", "expected"), REFUSED + IMPOSSIBLE)
def test_refused_before_the_run_starts(argv: list[str], expected: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    attack = [] if argv in [a for a, _ in IMPOSSIBLE] else ["--attack", "sign_flip",
                                                           "--malicious", "4"]
    code = main(["simulate", "--out", str(tmp_path / "runs"), *attack, *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"fedsilo simulate: error: {expected}\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("aggregator", ["krum:f=4", "trimmed_mean:beta=0.4", "median",
                                        "geometric_median", "bulyan:f=1", "mean",
                                        "norm_bounding", "fltrust"])
def test_within_tolerance_or_no_stated_tolerance_is_not_refused(aggregator: str) -> None:
    # krum needs n >= 2f + 3, bulyan n >= 4f + 3
    sites, malicious = {"krum:f=4": (11, 4), "bulyan:f=1": (7, 1)}.get(aggregator, (10, 4))
    config = SimulationConfig.load(None, {"aggregator": aggregator, "attack": "sign_flip",
                                          "malicious": malicious, "sites": sites})
    check_feasible(config)  # no ConfigError
    found = overreach(config)
    if aggregator in ("mean", "norm_bounding", "fltrust"):  # no stated tolerance: noted only
        assert found == (f"{malicious} attacking sites of {sites} sampled exceed what "
                         f"--aggregator {aggregator} tolerates (0: it states no robustness "
                         "guarantee)", False)
    else:
        assert found is None


def test_each_aggregator_states_its_tolerance() -> None:
    expect = {"krum:f=2": 2, "multi_krum:f=3": 3, "bulyan:f=2": 2, "trimmed_mean:beta=0.2": 2,
              "trimmed_mean:beta=0.25": 2, "median": 4, "geometric_median": 4, "mean": 0,
              "norm_bounding": 0, "centered_clipping": 0, "fltrust": 0}
    got = {spec: registry.make_aggregator(spec).tolerance(10) for spec in expect}
    assert got == expect
    assert registry.make_aggregator("median").tolerance(11) == 5


def test_allow_overreach_runs_and_genesis_says_it_is_outside_the_guarantee(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('sites = 5\nrounds = 1\naggregator = "krum:f=1"\nattack = "sign_flip"\n'
                    'malicious = 2\nallow_overreach = true\n')
    config = SimulationConfig.load(toml, {"out": str(tmp_path), "run_id": "over"})
    assert config.allow_overreach is True
    run = run_federation(config, engine="inprocess")
    genesis = lineage.read_chain(run.run_dir / "lineage.sqlite")[0]["body"]
    assert genesis["config"]["allow_overreach"] is True
    assert genesis["notes"] == [
        "outside the aggregator's guarantee: 2 attacking sites of 5 sampled exceed what "
        "--aggregator krum:f=1 tolerates (1: f=1); allowed by allow_overreach"]
    assert main(["lineage", "verify", str(run.run_dir)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


def test_a_run_within_tolerance_has_no_notes_in_genesis(tmp_path: Path) -> None:
    config = SimulationConfig.load(None, {"sites": 5, "rounds": 1, "aggregator": "krum:f=1",
                                          "attack": "sign_flip", "malicious": 1,
                                          "out": str(tmp_path), "run_id": "within"})
    run = run_federation(config, engine="inprocess")
    assert "notes" not in lineage.read_chain(run.run_dir / "lineage.sqlite")[0]["body"]


def test_genesis_notes_must_be_strings() -> None:
    body = lineage.GenesisRecord(run_id="r", created_at="t", config={}, code_version={},
                                 initial_model_digest="sha256:" + "0" * 64,
                                 server_public_key="0" * 64, notes=["a"]).to_dict()
    lineage.validate_body("genesis", body)
    with pytest.raises(ValueError, match=r"body.notes: expected a list of strings, got \[1\]"):
        lineage.validate_body("genesis", {**body, "notes": [1]})


def test_the_server_refuses_an_impossible_config_that_skipped_validation() -> None:
    """Deployments and library users may build a `RunConfig` without `validate`: the round
    loop still refuses before round 1 instead of waiting forever."""
    config = RunConfig(sites=3, secagg=SecAggSettings(enabled=True, threshold=5), run_id="x")
    spec = ServerSpec(config=config, run_id="x", initial_weights={"w": np.zeros(3, np.float32)})
    with pytest.raises(FederationError, match="--secagg-threshold: 5 exceeds the 3 holders"):
        FederationServer(spec)
    with pytest.raises(ConfigError, match="round 1 could never finish"):
        RunConfig.from_dict({"sites": 3, "secagg": {"enabled": True, "threshold": 5}})

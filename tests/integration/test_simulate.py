"""`fedsilo simulate` end to end on Flower's real simulation engine (Ray)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.server.config import RunConfig
from fedsilo.simulations.runner import run_federation

SMALL = {"sites": 5, "rounds": 3, "fraction": 0.6, "seed": 7}  # the default split: dirichlet:0.5

# twin_runs run Flower's Ray engine: tens of seconds each
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("runs")
    a = run_federation(RunConfig.load(None, {**SMALL, "out": str(out), "run_id": "a"}))
    b = run_federation(RunConfig.load(None, {**SMALL, "out": str(out), "run_id": "b"}))
    return a, b


def test_same_seed_same_partitions_samples_and_model(twin_runs: tuple) -> None:
    a, b = twin_runs
    assert a.final_digest == b.final_digest
    assert [r.model_digest for r in a.rounds] == [r.model_digest for r in b.rounds]
    chain_a = lineage.read_chain(a.run_dir / "lineage.sqlite")
    chain_b = lineage.read_chain(b.run_dir / "lineage.sqlite")
    sampled_a = [r["body"]["sampled"] for r in chain_a if r["type"] == "round"]
    sampled_b = [r["body"]["sampled"] for r in chain_b if r["type"] == "round"]
    assert sampled_a == sampled_b
    assert all(len(s) == 3 for s in sampled_a)  # 60% of 5 sites
    assert len({tuple(s) for s in sampled_a}) > 1  # sampling does change between rounds
    fps_a = {s["site_id"]: s["data_fingerprint"] for s in chain_a[0]["body"]["sites"]}
    fps_b = {s["site_id"]: s["data_fingerprint"] for s in chain_b[0]["body"]["sites"]}
    assert fps_a == fps_b and len(fps_a) == 5


def test_run_directory_contents(twin_runs: tuple) -> None:
    run = twin_runs[0]
    d = run.run_dir
    cfg = tomllib.loads((d / "config.toml").read_text())
    assert cfg["sites"] == 5 and cfg["rounds"] == 3 and cfg["run_id"] == "a"
    assert cfg["task"] == "digits" and cfg["aggregator"] == "mean"
    metrics = json.loads((d / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    for r in metrics["rounds"]:
        assert r["sampled"] == 3 and r["replied"] == 3
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["train_loss"] > 0 and r["wall_time"] > 0
    with np.load(d / "model.npz") as saved:
        assert lineage.arrays_digest(dict(saved)) == run.final_digest == metrics["final_model_digest"]
    html = (d / "report.html").read_text()
    # curves, per-site evaluation (eval_every defaults to 1), sites' data
    assert html.count("data:image/png;base64,") == 3 and "a" in html
    for sid in (f"site-{i:03d}" for i in range(5)):
        assert (d / "sites" / sid / "key.pem").stat().st_mode & 0o777 == 0o600


def test_default_scenario_learns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the in-process engine trains the model the Ray engine trains (the last test here); the
    # command on Ray, through the CLI in its own process, is test_signals.py's
    code = main(["simulate", "--rounds", "8", "--out", str(tmp_path), "--run-id", "d", "--quiet",
                 "--engine", "inprocess"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fedsilo: run d completed: 8 rounds (8 of 8 rounds changed the model), "
                           "test accuracy ")
    acc = float(line.split("test accuracy ")[1].split(",")[0])
    assert acc >= 0.85, line  # 10 sites, dirichlet:0.5 label skew, 8 rounds of FedAvg on digits


def test_in_process_grid_gives_the_same_model_as_the_simulation_engine(
    twin_runs: tuple, tmp_path: Path
) -> None:
    """The in-process Grid (benchmark sweeps) is only a transport: same apps, same model."""
    run = run_federation(
        RunConfig.load(None, {**SMALL, "out": str(tmp_path), "run_id": "inproc"}), engine="inprocess"
    )
    assert run.final_digest == twin_runs[0].final_digest

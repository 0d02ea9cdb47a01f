"""``fedsilo export mlflow`` (issue 23, point 6): a verified run in a real local MLflow store
(SQLite backend), read back with MLflow's own client."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import run_cli

from fedsilo import lineage

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def exported(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    code, stdout, stderr = run_cli(["export", "mlflow", str(finished_run), "--tracking-uri", uri,
                                 "--experiment", "hospitals", "--register", "readmission"])
    assert code == 0, stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hospitals").experiment_id])
    assert stdout.startswith(f"fedsilo export mlflow: run {run.info.run_id} in experiment ")
    assert stdout.endswith(", model readmission version 1\n")
    return {"client": client, "run": run, "uri": uri,
            "chain": lineage.read_chain(finished_run / "lineage.sqlite")}


def test_params_are_the_genesis_config(exported: dict[str, Any]):
    params = exported["run"].data.params
    config = exported["chain"][0]["body"]["config"]
    assert params["rounds"] == "2" and params["sites"] == "3" and params["task"] == "breast_cancer"
    assert params["dp.enabled"] == "False" and params["secagg.enabled"] == "False"
    assert params["aggregator"] == config["aggregator"]


def test_tags_pin_the_chain_and_the_model(exported: dict[str, Any]):
    tags, chain = exported["run"].data.tags, exported["chain"]
    assert tags["fedsilo.chain_head"] == chain[-1]["digest"]
    assert tags["fedsilo.model_digest"] == chain[-1]["body"]["final_model_digest"]
    assert tags["fedsilo.run_id"] == "g" and tags["fedsilo.outcome"] == "completed"
    assert tags["fedsilo.verified"].startswith("OK: ") and tags["fedsilo.flags"] == "0"
    assert exported["run"].info.status == "FINISHED"


def test_metrics_per_round_and_per_site_equal_the_chain(exported: dict[str, Any]):
    client, run_id = exported["client"], exported["run"].info.run_id
    rounds = [e["body"] for e in exported["chain"] if e["type"] == "round"]
    history = client.get_metric_history(run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (b["round"], pytest.approx(b["metrics"]["test_accuracy"])) for b in rounds]
    for ev in rounds[-1]["evaluations"]:
        (last,) = [m for m in client.get_metric_history(run_id, f"site.{ev['site_id']}.accuracy")
                   if m.step == 2]
        assert last.value == pytest.approx(ev["metrics"]["accuracy"])
    accepted = client.get_metric_history(run_id, "accepted")
    assert [m.value for m in accepted] == [float(len(b["accepted"])) for b in rounds]


def test_artifacts_and_registered_version(exported: dict[str, Any]):
    client, run = exported["client"], exported["run"]
    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"model.npz", "report.html", "governance"} <= top
    inner = {f.path for f in client.list_artifacts(run.info.run_id, "governance")}
    assert inner == {"governance/model_card.md", "governance/model_card.html",
                     "governance/lineage.prov.json"}
    (version,) = client.search_model_versions("name='readmission'")
    assert version.run_id == run.info.run_id
    assert version.description.startswith(f"fedsilo run g (MLflow run {run.info.run_id}); "
                                          f"lineage chain head {exported['chain'][-1]['digest']}")


def test_unverifiable_run_logs_nothing(tampered_run: Path, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, stdout, stderr = run_cli(["export", "mlflow", str(tampered_run), "--tracking-uri", uri])
    assert code == 2 and stdout == "" and stderr.count("\n") == 1
    assert "the lineage chain does not verify" in stderr
    assert not (tmp_path / "mlflow.db").exists()  # the store was not even opened


def test_unreachable_tracking_uri(finished_run: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    code, stdout, stderr = run_cli(["export", "mlflow", str(finished_run), "--tracking-uri", uri])
    assert code == 2 and stdout == "" and stderr.count("\n") == 1
    assert stderr.startswith(f"fedsilo export mlflow: error: --tracking-uri {uri}: the MLflow "
                             "tracking store cannot be used (")


def test_simulate_logs_to_mlflow_as_it_goes(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'live.db'}"
    code, stdout, stderr = run_cli([
        "simulate", "--task", "breast_cancer", "--sites", "3", "--rounds", "2", "--quiet",
        "--engine", "inprocess", "--out", str(tmp_path / "runs"), "--run-id", "live",
        "--mlflow", uri])
    assert code == 0, stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fedsilo").experiment_id])
    assert f"fedsilo simulate: MLflow run {run.info.run_id} (FINISHED) at {uri}\n" in stdout
    chain = lineage.read_chain(tmp_path / "runs" / "live" / "lineage.sqlite")
    rounds = [e["body"] for e in chain if e["type"] == "round"]
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (b["round"], pytest.approx(b["metrics"]["test_accuracy"])) for b in rounds]
    assert run.data.tags["fedsilo.chain_head"] == chain[-1]["digest"]
    assert run.data.tags["mlflow.runName"] == "live" and run.data.params["rounds"] == "2"


def test_simulate_refuses_an_unusable_store_before_running(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, stdout, stderr = run_cli(["simulate", "--rounds", "1", "--out", str(tmp_path / "runs"),
                                 "--engine", "inprocess", "--mlflow", uri])
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"fedsilo simulate: error: --mlflow {uri}: the MLflow tracking "
                             "store cannot be used (")
    assert not (tmp_path / "runs").exists()

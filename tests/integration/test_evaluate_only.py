"""Evaluation-only runs (issue 20, point 7): ``fedsilo evaluate MODEL`` trains nothing;
every site scores MODEL on its own held-out rows and signs its score; the run directory
holds the scorecard, which ``lineage verify`` checks. In-process engine, real files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.lineage.signing import verify_evaluation
from fedsilo.server.config import RunConfig
from fedsilo.simulations.holdout import held_out_split
from fedsilo.simulations.partition import PartitionSpec, partition
from fedsilo.simulations.runner import run_federation
from fedsilo.tasks.datasets import load_dataset

SITES = 4
ARGS = ["--task", "breast_cancer", "--sites", str(SITES), "--partition", "dirichlet:0.5",
        "--engine", "inprocess"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model trained for 2 rounds, saved as a torch state_dict, then scored by
    ``fedsilo evaluate`` at 4 sites."""
    base = tmp_path_factory.mktemp("evaluate")
    trained = run_federation(RunConfig.load(None, {
        "task": "breast_cancer", "sites": SITES, "rounds": 2, "out": str(base), "run_id": "t"}),
        engine="inprocess")
    with np.load(trained.run_dir / "model.npz") as saved:
        weights = {k: saved[k].copy() for k in saved.files}
    pt = base / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, pt)
    before = pt.read_bytes()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["evaluate", str(pt), *ARGS, "--out", str(base / "runs"), "--run-id", "e"])
    return {"code": code, "line": out.getvalue(), "run_dir": base / "runs" / "e",
            "weights": weights, "pt": pt, "pt_bytes": before,
            "trained_last": trained.rounds[-1].site_eval}


def _chain(run_dir: Path) -> list[dict[str, Any]]:
    return lineage.read_chain(run_dir / "lineage.sqlite")


def _direct(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Log loss and accuracy of the bundled MLP (fc1, ReLU, fc2), computed here in numpy."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    h = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
    logits = h @ w["fc2.weight"].T + w["fc2.bias"]
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((logits.argmax(1) == y).mean())


def test_each_site_scores_the_model_on_its_own_held_out_rows(scored: dict[str, Any]) -> None:
    assert scored["code"] == 0
    chain = _chain(scored["run_dir"])
    assert [r["type"] for r in chain] == ["genesis", "round", "closing"]
    card = chain[1]["body"]
    data = load_dataset("breast_cancer", seed=0)
    parts = partition(data.y_train, SITES, PartitionSpec.parse("dirichlet:0.5"), 0)
    held = held_out_split([data.y_train[p] for p in parts], data.y_test, 0)
    evals = card["evaluations"]
    assert [e["site_id"] for e in evals] == [f"site-{i:03d}" for i in range(SITES)]
    for i, e in enumerate(evals):
        loss, acc = _direct(scored["weights"], data.x_test[held[i]], data.y_test[held[i]])
        assert e["num_examples"] == len(held[i])
        assert e["loss"] == pytest.approx(loss, rel=1e-5)
        assert e["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-6)  # float32 at the site
    # the same sites scored the same model at the end of training: the same numbers
    assert scored["trained_last"]["sites"] == {
        e["site_id"]: {"loss": e["loss"], "num_examples": e["num_examples"], **e["metrics"]}
        for e in evals}
    mean = np.mean([e["metrics"]["accuracy"] for e in evals])
    worst = min(evals, key=lambda e: (e["metrics"]["accuracy"], e["site_id"]))
    assert mean > 0.8  # a trained model, not a random one
    line = scored["line"].strip()
    assert len(line.splitlines()) == 1 and line.startswith("fedsilo evaluate: run e completed (")
    assert (f"evaluation only: {SITES} of {SITES} sites scored the model), sites acc mean "
            f"{mean:.4f} worst {worst['metrics']['accuracy']:.4f} ({worst['site_id']})") in line


def test_the_scorecard_is_signed_by_each_site_and_verifies(scored: dict[str, Any]) -> None:
    run_dir = scored["run_dir"]
    chain = _chain(run_dir)
    keys = {s["site_id"]: s["public_key"] for s in chain[0]["body"]["sites"]}
    card = chain[1]["body"]
    for e in card["evaluations"]:
        assert verify_evaluation(keys[e["site_id"]], e["signature"], "e", 1, e["model_digest"],
                                 e["loss"], e["metrics"], e["num_examples"])
        assert not verify_evaluation(keys[e["site_id"]], e["signature"], "e", 1,
                                     e["model_digest"], e["loss"] * 0.5, e["metrics"],
                                     e["num_examples"])
    report = lineage.verify_run(run_dir)
    assert report.ok, report.summary
    assert report.site_signatures == 2 * SITES  # declarations + evaluations
    for name in ("config.toml", "metrics.json", "report.html", "rounds.jsonl"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["closing_reason"] == "completed"
    detail = f"evaluation only: {SITES} of {SITES} sites scored the model"
    assert metrics["closing_detail"] == detail
    assert set(metrics["site_evaluation"]["sites"]) == {e["site_id"] for e in card["evaluations"]}
    assert "<h2>Per-site evaluation</h2>" in (run_dir / "report.html").read_text()


def test_the_model_is_unchanged(scored: dict[str, Any]) -> None:
    run_dir = scored["run_dir"]
    digest = lineage.arrays_digest(scored["weights"])
    genesis, card, closing = (r["body"] for r in _chain(run_dir))
    assert genesis["initial_model_digest"] == digest
    assert card["model_in"] == card["model_out"] == digest
    assert card["contributions"] == [] and card["accepted"] == []
    assert card["extra"]["evaluation_only"] is True
    assert all(e["model_digest"] == digest for e in card["evaluations"])
    assert closing["final_model_digest"] == digest and closing["reason"] == "completed"
    with np.load(run_dir / "model.npz") as saved:
        assert lineage.arrays_digest({k: saved[k] for k in saved.files}) == digest
    assert scored["pt"].read_bytes() == scored["pt_bytes"]
    config = RunConfig.load(run_dir / "config.toml")
    assert config.rounds == 1 and config.init_model == str(scored["pt"].resolve())


def _wrong_shape(path: Path, w: dict[str, np.ndarray]) -> None:
    np.savez(path, **{**w, "fc2.weight": np.zeros((3, 64), np.float32)})


def _missing_layer(path: Path, w: dict[str, np.ndarray]) -> None:
    np.savez(path, **{k: v for k, v in w.items() if k != "fc1.bias"})


def _extra_layer(path: Path, w: dict[str, np.ndarray]) -> None:
    torch.save({**{k: torch.from_numpy(v) for k, v in w.items()}, "fc3.weight": torch.ones(2)},
               path)


@pytest.mark.parametrize(("name", "write", "expected"), [
    ("absent.npz", None, "file not found"),
    ("shape.npz", _wrong_shape, "layer 'fc2.weight' has shape (3, 64); the task's model "
                                "expects (2, 64)"),
    ("missing.npz", _missing_layer, "layer 'fc1.bias' of the task's model is missing"),
    ("extra.pt", _extra_layer, "layer 'fc3.weight' is not in the task's model"),
])
def test_a_bad_model_exits_2_with_one_line_and_writes_nothing(
    scored: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
    write: Any, expected: str,
) -> None:
    model = tmp_path / name
    if write is not None:
        write(model, scored["weights"])
    out = tmp_path / "runs"
    code = main(["evaluate", str(model), *ARGS, "--out", str(out), "--run-id", "bad"])
    err = capsys.readouterr()
    assert code == 2 and err.out == ""
    assert len(err.err.strip().splitlines()) == 1
    assert err.err.startswith(f"fedsilo evaluate: error: MODEL: {model}: {expected}"), err.err
    assert not out.exists()


def test_a_deployment_run_with_evaluate_scores_without_training(
    scored: dict[str, Any], tmp_path: Path
) -> None:
    """``fedsilo server run --evaluate MODEL``: the run config it submits (`app_run_config`
    with ``evaluate-only``) makes the deployed ServerApp (``fedsilo.server.flower_app``)
    run the evaluation-only path; here on the in-process grid, its nodes standing in for
    the SuperNodes (``partition-id`` sites)."""
    from flwr.app import Context, RecordDict

    from fedsilo.client.flower_app import client_app
    from fedsilo.server.deploy import app_run_config
    from fedsilo.server.flower_app import server_app
    from fedsilo.simulations.inprocess import InProcessGrid

    model = tmp_path / "model.npz"
    np.savez(model, **scored["weights"])
    config = RunConfig.load(None, {"task": "breast_cancer", "sites": 3, "task_options": {"partition": "iid"},
                                   "init_model": str(model), "rounds": 1, "run_id": "dep",
                                   "out": str(tmp_path / "runs")})
    values = app_run_config(config, evaluate_only=True)
    assert values["evaluate-only"] is True and "evaluate-only" not in app_run_config(config)
    server_app(InProcessGrid(client_app, 3),
               Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=values))
    run_dir = tmp_path / "runs" / "dep"
    genesis, card, closing = (r["body"] for r in _chain(run_dir))
    digest = lineage.arrays_digest(scored["weights"])
    assert card["model_in"] == card["model_out"] == closing["final_model_digest"] == digest
    assert card["contributions"] == [] and len(card["evaluations"]) == 3
    assert closing["detail"] == "evaluation only: 3 of 3 sites scored the model"
    report = lineage.verify_run(run_dir)
    assert report.ok and report.site_signatures == 6, report.summary
    assert (run_dir / "report.html").is_file() and (run_dir / "metrics.json").is_file()


def test_server_run_evaluate_with_a_bad_model_exits_2_before_submitting(
    scored: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "server.toml").write_text("[superlink]\nport = 9\ninsecure = true\n")
    runs = tmp_path / "runs"
    (tmp_path / "run.toml").write_text(f'task = "breast_cancer"\nsites = 3\nout = "{runs}"\n')
    model = tmp_path / "shape.npz"
    _wrong_shape(model, scored["weights"])
    base = ["server", "run", "--config", str(tmp_path / "run.toml"), "--server",
            str(tmp_path / "server.toml")]
    for argv, expected in (
        ([*base, "--evaluate", str(model)],
         f"--evaluate: {model}: layer 'fc2.weight' has shape (3, 64)"),
        ([*base, "--evaluate", str(model), "--resume", str(tmp_path)],
         "--evaluate: an evaluation-only run cannot --resume"),
    ):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert err.startswith(f"fedsilo server run: error: {expected}"), err
    assert not runs.exists() and not (tmp_path / "state").exists()

"""Per-site evaluation (issue 20, point 6): every ``eval_every`` rounds each sampled site
scores the round's global model on its own held-out split, signs the score, and the
signed entries reach lineage, ``metrics.json``, ``rounds.jsonl``, the progress line and
``report.html``; central evaluation is optional (a server that holds no data)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.client import Site, make_client_app
from fedsilo.client.trainer import EvalResult
from fedsilo.lineage.envelope import seal
from fedsilo.lineage.signing import verify_evaluation
from fedsilo.lineage.synthetic import build_synthetic_run
from fedsilo.progress import site_scores
from fedsilo.server.app import ServerOutcome, make_server_app
from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.server.site_eval import evaluation_due, summarise
from fedsilo.simulations.holdout import held_out_split
from fedsilo.simulations.inprocess import run_in_process
from fedsilo.simulations.partition import PartitionSpec, partition
from fedsilo.simulations.runner import SimulationRun, build_server_spec, run_federation
from fedsilo.simulations.sites import simulated_site
from fedsilo.tasks.datasets import load_dataset


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    return [e["body"] for e in lineage.read_chain(run_dir / "lineage.sqlite") if e["type"] == "round"]


def _site_keys(run_dir: Path) -> dict[str, str]:
    genesis = lineage.read_chain(run_dir / "lineage.sqlite")[0]["body"]
    return {s["site_id"]: s["public_key"] for s in genesis["sites"]}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> SimulationRun:
    """`fedsilo simulate` with every default (eval_every = 1), on the in-process engine."""
    out = tmp_path_factory.mktemp("default")
    return run_federation(RunConfig.load(None, {"out": str(out), "run_id": "d"}), engine="inprocess")


@pytest.fixture(scope="module")
def every_other(tmp_path_factory: pytest.TempPathFactory) -> SimulationRun:
    """eval_every = 2 over 3 rounds, 2 of 4 sites sampled per round: rounds 2 and 3 (the
    last) are evaluated, by the sampled sites only."""
    out = tmp_path_factory.mktemp("every-other")
    cfg = RunConfig.load(None, {"out": str(out), "run_id": "e", "sites": 4, "rounds": 3,
                                "fraction": 0.5, "eval_every": 2})
    return run_federation(cfg, engine="inprocess")


def test_site_evaluation_changes_no_training(default_run: SimulationRun,
                                              tmp_path: Path) -> None:
    """The sites' held-out rows come from the central test split and scoring draws no
    randomness: the default run trains exactly the model of the same run without per-site
    evaluation. (An absolute digest is not pinned: torch's CPU kernels differ by CPU, e.g.
    AVX-512 and AVX2 machines give different low bits.)"""
    quiet = run_federation(RunConfig.load(None, {"out": str(tmp_path), "run_id": "q",
                                                 "eval_every": 0}), engine="inprocess")
    assert default_run.final_digest == quiet.final_digest
    assert default_run.final_accuracy == quiet.final_accuracy
    assert default_run.final_accuracy > 0.9  # 10 classes; the README's run gives 0.9333


def test_every_sampled_site_signs_its_score_of_each_rounds_model(default_run: SimulationRun) -> None:
    run_dir = default_run.run_dir
    keys = _site_keys(run_dir)
    data = load_dataset("digits", seed=0)
    parts = partition(data.y_train, 10, PartitionSpec.parse("dirichlet:0.5"), 0)
    held = held_out_split([data.y_train[p] for p in parts], data.y_test, 0)
    bodies = _rounds(run_dir)
    assert len(bodies) == 20
    for body in bodies:
        evals = body["evaluations"]
        assert [e["site_id"] for e in evals] == sorted(body["sampled"]) and len(evals) == 10
        for e in evals:
            assert e["model_digest"] == body["model_out"]
            i = int(e["site_id"].split("-")[1])
            assert e["num_examples"] == len(held[i])  # the site's own share of the test rows
            assert set(e["metrics"]) == {"accuracy"} and 0.0 <= e["metrics"]["accuracy"] <= 1.0
            assert verify_evaluation(keys[e["site_id"]], e["signature"], "d", body["round"],
                                     e["model_digest"], e["loss"], e["metrics"], e["num_examples"])
            assert not verify_evaluation(keys[e["site_id"]], e["signature"], "d", body["round"],
                                         e["model_digest"], e["loss"] + 1e-9, e["metrics"],
                                         e["num_examples"])
    last = bodies[-1]["evaluations"]
    assert float(np.mean([e["metrics"]["accuracy"] for e in last])) >= 0.9
    report = lineage.verify_run(run_dir, all_signatures=True)  # every signature, counted
    assert report.ok, report.summary
    # 200 contributions + 10 declarations + 200 evaluations
    assert report.site_signatures == 410


def test_metrics_json_and_rounds_jsonl_equal_the_lineage_entries(default_run: SimulationRun) -> None:
    run_dir = default_run.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    for body, m, j in zip(_rounds(run_dir), metrics["rounds"], logged, strict=True):
        expect = {e["site_id"]: {"loss": e["loss"], "num_examples": e["num_examples"],
                                 **e["metrics"]} for e in body["evaluations"]}
        for entry in (m["site_eval"], j["site_eval"]):
            assert entry["sites"] == expect
            for name in ("loss", "accuracy"):
                values = [v[name] for v in expect.values()]
                assert entry["mean"][name] == pytest.approx(sum(values) / len(values), rel=1e-12)
            accs = {s: v["accuracy"] for s, v in expect.items()}
            losses = {s: v["loss"] for s, v in expect.items()}
            assert entry["worst"]["accuracy"] == min(accs.values())
            assert entry["worst"]["loss"] == max(losses.values())
            assert accs[entry["worst_site"]["accuracy"]] == min(accs.values())
    assert metrics["site_evaluation"] == metrics["rounds"][-1]["site_eval"]


def test_report_has_a_curve_per_site_and_the_spread(default_run: SimulationRun) -> None:
    page = (default_run.run_dir / "report.html").read_text()
    assert '<h2>Per-site evaluation</h2><img alt="per-site accuracy per round"' in page
    assert page.count("data:image/png;base64,") == 3
    for i in range(10):
        assert f"<tr><td>site-{i:03d}</td>" in page
    assert "<th>worst site</th>" in page and "<th>mean over sites</th>" in page


def test_progress_line_shows_mean_and_worst_site(default_run: SimulationRun) -> None:
    last = default_run.rounds[-1]
    ev = last.site_eval
    assert ev is not None
    line = site_scores(last)
    assert line == (f"sites acc mean {ev['mean']['accuracy']:.4f} worst "
                    f"{ev['worst']['accuracy']:.4f} ({ev['worst_site']['accuracy']})")


def test_off_rounds_carry_no_evaluations(every_other: SimulationRun) -> None:
    bodies = _rounds(every_other.run_dir)
    assert [("evaluations" in b) for b in bodies] == [False, True, True]
    for b in bodies[1:]:
        assert len(b["sampled"]) == 2
        assert [e["site_id"] for e in b["evaluations"]] == sorted(b["sampled"])
    metrics = json.loads((every_other.run_dir / "metrics.json").read_text())
    assert [r["site_eval"] is not None for r in metrics["rounds"]] == [False, True, True]
    assert lineage.verify_run(every_other.run_dir).ok


def test_evaluation_schedule() -> None:
    assert [r for r in range(1, 8) if evaluation_due(3, r, 7)] == [3, 6, 7]
    assert not any(evaluation_due(0, r, 7) for r in range(1, 8))
    assert all(evaluation_due(1, r, 7) for r in range(1, 8))


def _reseal(run_dir: Path, seq: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """A server holding its key rewrites round record ``seq`` and re-signs the chain."""
    db = run_dir / "lineage.sqlite"
    envs = lineage.read_chain(db)
    edit(envs[seq]["body"])
    key = lineage.load_or_create_key(run_dir / "keys" / "server.pem")
    prev = envs[seq - 1]["digest"]
    with sqlite3.connect(db) as conn:
        for i in range(seq, len(envs)):
            data, digest, sig = seal(key, i, envs[i]["type"], prev, envs[i]["body"])
            conn.execute("UPDATE records SET digest=?, signature=?, signed=? WHERE seq=?",
                         (digest, sig, data.decode(), i))
            prev = digest


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda b: b["evaluations"][3].update(loss=b["evaluations"][3]["loss"] / 2),
     "record 5 (round): site signature of 'site-003' over its evaluation invalid"),
    (lambda b: b["evaluations"][0]["metrics"].update(accuracy=0.123456),
     "record 5 (round): site signature of 'site-000' over its evaluation invalid"),
    (lambda b: b["evaluations"][1].update(model_digest=b["model_in"]),
     "record 5 (round): site 'site-001' evaluation is of model"),
    (lambda b: b["evaluations"].append(dict(b["evaluations"][2])),
     "record 5 (round): site 'site-002' evaluates twice in round 5"),
    (lambda b: b["evaluations"][4].update(site_id="site-999"),
     "record 5 (round): evaluation from unknown site 'site-999'"),
])
def test_a_tampered_evaluation_fails_verify_naming_the_record(
    default_run: SimulationRun, tmp_path: Path, edit: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    run_dir = tmp_path / "d"
    shutil.copytree(default_run.run_dir, run_dir)
    _reseal(run_dir, 5, edit)  # record 5 is round 5 (record 0 is genesis)
    report = lineage.verify_run(run_dir)
    assert not report.ok and report.failed_seq == 5
    assert report.first_failure is not None and report.first_failure.startswith(expected), \
        report.first_failure


def test_an_unsealed_edit_of_an_evaluation_fails_at_its_record(
    default_run: SimulationRun, tmp_path: Path
) -> None:
    run_dir = tmp_path / "d"
    shutil.copytree(default_run.run_dir, run_dir)
    db = run_dir / "lineage.sqlite"
    with sqlite3.connect(db) as conn:
        (signed,) = conn.execute("SELECT signed FROM records WHERE seq=7").fetchone()
        env = json.loads(signed)
        env["body"]["evaluations"][0]["loss"] = 0.0
        conn.execute("UPDATE records SET signed=? WHERE seq=7",
                     (lineage.canonical_json(env).decode(),))
    report = lineage.verify_run(run_dir)
    assert not report.ok and report.first_failure.startswith("record 7 (round): digest mismatch")


def test_synthetic_chains_with_evaluations_verify_and_old_ones_still_do(tmp_path: Path) -> None:
    new = build_synthetic_run(tmp_path / "new", rounds=3, sites=3, evaluations=True)
    old = build_synthetic_run(tmp_path / "old", rounds=3, sites=3)
    a, b = lineage.verify_run(new.run_dir), lineage.verify_run(old.run_dir)
    assert a.ok and b.ok, (a.summary, b.summary)
    assert a.site_signatures == b.site_signatures + 9  # one evaluation per site per round
    assert all("evaluations" not in r for r in _rounds(old.run_dir))


class _NoEvaluation:
    """A site's Trainer whose evaluation has no held-out rows (count 0) or fails."""

    def __init__(self, inner: Any, how: str) -> None:
        self.inner, self.how = inner, how

    def fit(self, weights: dict[str, np.ndarray], config: Any) -> Any:
        return self.inner.fit(weights, config)

    def evaluate(self, weights: dict[str, np.ndarray], config: Any) -> EvalResult:
        if self.how == "raise":
            raise RuntimeError("held-out file unreadable")
        if self.how == "nan":
            return EvalResult(loss=float("nan"), num_examples=5, metrics={})
        return EvalResult(loss=0.0, num_examples=0, metrics={})

    def data_fingerprint(self) -> str:
        return self.inner.data_fingerprint()

    def num_examples(self) -> int:
        return self.inner.num_examples()


def test_a_server_without_data_gets_only_the_sites_scores(tmp_path: Path) -> None:
    """No central evaluator (a deployment's server holds no data): the sites' signed scores
    are the run's evaluation. A site that sends none is left out, not rejected; one whose
    evaluation fails or is not finite is left out with its reason in the record."""
    cfg = RunConfig.load(None, {"sites": 4, "rounds": 2, "out": str(tmp_path), "run_id": "n"})
    run_dir = tmp_path / "n"
    run_dir.mkdir()
    spec = build_server_spec(cfg, run_dir)
    spec.evaluate_fn = None
    odd = {"site-001": "none", "site-002": "raise", "site-003": "nan"}
    sites: dict[str, Site] = {}

    def factory(context: Context, federation: Any) -> Site:
        site = simulated_site(context, federation)
        if site.site_id in odd and site.site_id not in sites:
            sites[site.site_id] = replace(site, trainer=_NoEvaluation(site.trainer,
                                                                      odd[site.site_id]))
        return sites.get(site.site_id, site)

    outcome = ServerOutcome()
    run_in_process(make_server_app(lambda _c: spec, outcome), make_client_app(factory), 4)
    assert outcome.error is None and outcome.result is not None
    for summary in outcome.result.rounds:
        assert summary.test_accuracy is None and summary.test_loss is None
        assert summary.site_eval is not None and list(summary.site_eval["sites"]) == ["site-000"]
    for body in _rounds(run_dir):
        assert body["status"] == "completed"
        assert body["accepted"] == ["site-000", "site-001", "site-002", "site-003"]
        assert [e["site_id"] for e in body["evaluations"]] == ["site-000"]
        problems = body["extra"]["evaluation_problems"]
        assert set(problems) == {"site-002", "site-003"}  # site-001 sent none: not a problem
        assert problems["site-002"].startswith("evaluation failed at the site: ")
        assert "held-out file unreadable" in problems["site-002"]
        assert problems["site-003"] == "refused by site: evaluation not sent: loss must be finite, got nan"
        assert "test_accuracy" not in body["metrics"]
    assert lineage.verify_run(run_dir).ok


def test_eval_every_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^--eval-every: must be an integer >= 0 \(0: no "
                                          r"per-site evaluation\), got -1$"):
        RunConfig.load(None, {"eval_every": -1})
    with pytest.raises(ConfigError, match=r"^--eval-every: expected an integer, got 1.5$"):
        RunConfig.load(None, {"eval_every": 1.5})
    assert RunConfig.load(None, {"eval_every": 0}).eval_every == 0
    assert RunConfig().eval_every == 1


def test_eval_every_from_toml_and_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("eval_every = 3\nrounds = 4\n")
    assert RunConfig.load(toml).eval_every == 3
    assert RunConfig.load(toml, {"eval_every": 0}).eval_every == 0
    out = tmp_path / "out"
    code = main(["simulate", "--eval-every", "-2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--eval-every: must be an integer >= 0" in err
    assert not out.exists() or not any(out.iterdir())


def test_held_out_split_is_disjoint_complete_and_follows_the_skew() -> None:
    data = load_dataset("digits", seed=0)
    parts = partition(data.y_train, 10, PartitionSpec.parse("dirichlet:0.5"), 0)
    labels = [data.y_train[p] for p in parts]
    held = held_out_split(labels, data.y_test, 0)
    rows = np.concatenate(held)
    assert len(rows) == len(np.unique(rows)) == len(data.y_test)
    assert all(len(h) >= 1 for h in held)
    for y, h in zip(labels, held, strict=True):
        train_share = np.bincount(y, minlength=10) / len(y)
        test_share = np.bincount(data.y_test[h], minlength=10) / len(h)
        assert np.abs(train_share - test_share).sum() < 0.35  # same label skew, roughly
    assert [list(h) for h in held] == [list(h) for h in held_out_split(labels, data.y_test, 0)]


def test_summary_mean_and_worst() -> None:
    ev = summarise([
        {"site_id": "b", "loss": 0.5, "num_examples": 10, "metrics": {"accuracy": 0.8, "rmse": 2.0}},
        {"site_id": "a", "loss": 0.25, "num_examples": 30, "metrics": {"accuracy": 0.9, "rmse": 1.0}},
    ])
    assert ev is not None
    assert ev["mean"] == {"accuracy": pytest.approx(0.85), "loss": 0.375, "rmse": 1.5}
    assert ev["worst"] == {"accuracy": 0.8, "loss": 0.5, "rmse": 2.0}
    assert ev["worst_site"] == {"accuracy": "b", "loss": "b", "rmse": "b"}
    assert summarise([]) is None


def test_evaluating_between_rounds_leaves_training_unchanged_under_dp_sgd(tmp_path: Path) -> None:
    """Scoring the model puts the site's torch model in eval mode; record-level DP-SGD
    (Opacus) refuses a model in eval mode, so the next fit must switch back: the run with
    per-site evaluation trains exactly as the one without."""
    runs = {}
    for every in (1, 0):
        cfg = RunConfig.load(None, {"out": str(tmp_path), "run_id": f"e{every}", "sites": 3,
                                    "rounds": 2, "record_dp.enabled": True,
                                    "record_dp.epsilon": 2.0, "eval_every": every})
        runs[every] = run_federation(cfg, engine="inprocess")
    assert [r.status for r in runs[1].rounds] == ["completed", "completed"]
    assert runs[1].final_digest == runs[0].final_digest
    assert all(r.site_eval is not None for r in runs[1].rounds)
    assert all(r.site_eval is None for r in runs[0].rounds)

"""A run ends with a status that says what happened (issue 19, "Why" point 4).

``completed`` only when the configured minimum of rounds changed the model; ``no_progress``
(exit 3) when fewer did; partial progress stated in the summary and the closing record;
``server run --wait`` exits with the run's own status; a DP run says before round 1 how
many rounds fit its budget. Runs use the in-process engine (the same ServerApp and
ClientApp, no Ray).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.lineage import ClosingRecord
from fedsilo.server.deploy import run_outcome
from fedsilo.server.outcome import exit_code

SMALL = ["--sites", "4", "--engine", "inprocess", "--quiet"]
REFUSED = "every sampled site refused (site privacy ceiling)"


def _simulate(capsys: pytest.CaptureFixture[str], out: Path, run_id: str,
              *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *SMALL, "--out", str(out), "--run-id", run_id, *args])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines()[-1] if captured.out.strip() else "", captured.err


def _closing(run_dir: Path) -> dict:
    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    assert chain[-1]["type"] == "closing"
    return chain[-1]["body"]


def test_every_site_refusing_under_its_ceiling_is_no_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: ``rounds_done: 30 rounds``, exit 0, while nothing was trained."""
    code, line, err = _simulate(capsys, tmp_path, "refused", "--rounds", "3",
                                "--dp-epsilon", "5", "--site-max-epsilon", "0.01")
    detail = f"0 of 3 rounds changed the model; 3 skipped: {REFUSED}"
    assert code == 3
    assert line.startswith(f"fedsilo: run refused no_progress: 3 rounds ({detail}), ")
    closing = _closing(tmp_path / "refused")
    assert (closing["reason"], closing["detail"]) == ("no_progress", detail)
    report = lineage.verify_run(tmp_path / "refused")
    assert report.ok and "closed (no_progress)" in report.summary
    # the budget fits the run (the noise is calibrated to it): stated, no warning
    assert ("fedsilo: privacy budget epsilon=5 at delta=1e-05 fits 3 of 3 requested rounds"
            in err) and "warning" not in err


def test_all_rounds_skipped_is_no_progress_and_server_wait_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: ``server run --wait`` printed ``finished:completed``, exit 0, after every round
    was skipped (0 usable updates). Here every update fails screening; the status that
    ``--wait`` reports comes from the run directory's closing record, not from Flower."""
    config = tmp_path / "run.toml"
    config.write_text("max_update_norm = 1e-9\n")
    code, line, _ = _simulate(capsys, tmp_path, "skipped", "--rounds", "3", "--config", str(config))
    detail = "0 of 3 rounds changed the model; 3 skipped: 0 usable updates; min_sites is 1"
    assert code == 3 and f"no_progress: 3 rounds ({detail})" in line
    metrics = json.loads((tmp_path / "skipped" / "metrics.json").read_text())
    assert [r["status"] for r in metrics["rounds"]] == ["skipped"] * 3
    assert (metrics["closing_reason"], metrics["closing_detail"], metrics["rounds_changed"]) == (
        "no_progress", detail, 0)
    status, why = run_outcome(tmp_path / "skipped", "finished:completed")
    assert (status, why, exit_code(status)) == ("no_progress", detail, 3)


def test_partial_progress_is_stated_and_min_rounds_changed_decides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sites take part until their own ceiling (epsilon 2.1: rounds 1 and 2 at noise 3),
    then refuse: 2 of 6 rounds change the model."""
    dp = ["--rounds", "6", "--dp-epsilon", "10", "--dp-noise-multiplier", "3",
          "--site-max-epsilon", "2.1"]
    detail = f"2 of 6 rounds changed the model; 4 skipped: {REFUSED}"
    code, line, _ = _simulate(capsys, tmp_path, "partial", *dp)
    assert code == 0 and line.startswith(f"fedsilo: run partial completed: 6 rounds ({detail}), ")
    assert _closing(tmp_path / "partial")["detail"] == detail
    assert detail in (tmp_path / "partial" / "report.html").read_text()

    code, line, _ = _simulate(capsys, tmp_path, "strict", *dp, "--min-rounds-changed", "3")
    strict = f"{detail}; fewer than min_rounds_changed = 3"
    assert code == 3 and line.startswith(f"fedsilo: run strict no_progress: 6 rounds ({strict}), ")
    assert lineage.verify_run(tmp_path / "strict").ok


def test_dp_run_states_the_rounds_its_budget_fits_before_round_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a budget that fits 2 of 100 rounds, and nothing said so before the run.
    At noise 3 one round spends epsilon 1.386, three 2.541, four 2.985: 2.6 fits 3."""
    code, line, err = _simulate(capsys, tmp_path, "budget", "--rounds", "10", "--dp-epsilon", "2.6",
                                "--dp-noise-multiplier", "3")
    warning = ("fedsilo: privacy budget epsilon=2.6 at delta=1e-05 fits 3 of 10 requested rounds "
               "(noise multiplier 3); warning: the run will stop after round 3 (budget_exhausted)")
    assert warning in err.splitlines()
    assert code == 0 and line.startswith("fedsilo: run budget budget_exhausted: 3 rounds (")
    chain = lineage.read_chain(tmp_path / "budget" / "lineage.sqlite")
    rounds = [r["body"] for r in chain if r["type"] == "round"]
    assert len(rounds) == 3  # the stated number is the number run
    assert rounds[0]["extra"]["dp_budget"] == {"rounds_in_budget": 3, "rounds_requested": 10}
    assert chain[-1]["body"]["reason"] == "budget_exhausted"


def test_run_outcome_without_a_closing_record_is_an_error(tmp_path: Path) -> None:
    status, why = run_outcome(tmp_path, "finished:completed")
    assert status == "error" and exit_code(status) == 1
    assert why == f"no closing record in {tmp_path} (Flower: finished:completed)"


def test_closing_vocabulary_keeps_the_legacy_name() -> None:
    fields = {"detail": "", "rounds_completed": 3, "final_model_digest": None, "epsilon_spent": None}
    for reason in ("completed", "no_progress", "budget_exhausted", "error", "interrupted",
                   "rounds_done"):
        assert ClosingRecord.from_dict({"reason": reason, **fields}).reason == reason
    with pytest.raises(ValueError, match="'completed', 'no_progress'"):
        ClosingRecord.from_dict({"reason": "done", **fields})
    assert [exit_code(r) for r in ("completed", "rounds_done", "no_progress", "error")] == [0, 0, 3, 1]


def test_exit_codes_are_documented_and_min_rounds_changed_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["server", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0 and "3 no_progress (no round changed the model)" in text
    assert "the run's own status (its lineage closing record)" in text
    code, _, err = _simulate(capsys, tmp_path, "bad", "--rounds", "3", "--min-rounds-changed", "4")
    assert code == 2
    assert err == "fedsilo simulate: error: --min-rounds-changed: 4 exceeds --rounds 3\n"


def test_deployment_report_shows_the_handshake_sites_and_declared_counts(tmp_path: Path) -> None:
    """The deployed ServerApp (``flower_app``), here on the in-process grid: its report's
    sites' data come from the handshake (ids, declared example counts), not from a
    simulated partition; its outputs follow the closing record and carry the status."""
    import re

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsilo.simulations import flower_app
    from fedsilo.simulations.inprocess import InProcessGrid

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"sites": 3, "rounds": 2, "task_options.partition": "iid",
                                  "out": str(tmp_path), "run-id": "dep"})
    flower_app.server_app(InProcessGrid(flower_app.client_app, 3), context)
    run_dir = tmp_path / "dep"
    genesis = lineage.read_chain(run_dir / "lineage.sqlite")[0]["body"]
    declared = {s["site_id"]: s.get("num_examples") for s in genesis["sites"]}
    assert all(isinstance(n, int) and n > 0 for n in declared.values()), declared
    html = (run_dir / "report.html").read_text()
    assert 'alt="examples each site declared"' in html and "by label" not in html
    rows = dict(re.findall(r"<tr><td>(site-\d+)</td><td>(\d+|not declared)</td></tr>", html))
    assert rows == {k: "not declared" if v is None else str(v) for k, v in declared.items()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["closing_reason"] == _closing(run_dir)["reason"]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert lineage.verify_run(run_dir).ok


def test_rounds_within_the_budget_agrees_with_the_accountant() -> None:
    from fedsilo.privacy.accounting import ClientLevelAccountant

    acct = ClientLevelAccountant(noise_multiplier=3.0, sample_rate=1.0, delta=1e-5,
                                 sampling="poisson", population=4, method="rdp")
    for budget in (1.0, 1.386, 2.6, 3.0, 50.0):
        brute = max((n for n in range(0, 41) if acct.epsilon_of_rounds(n) <= budget), default=0)
        assert acct.rounds_within(budget, 40) == brute

"""``fedsilo card RUN_DIR`` (issue 23, point 5): a model card from the verified chain only.

Every figure the card prints is checked against the chain itself (read here with
`fedsilo.lineage`), and a run whose chain does not verify gets no card at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli

from fedsilo import lineage


@pytest.fixture(scope="module")
def card(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("card")
    code, stdout, stderr = run_cli(["card", str(finished_run), "--out", str(out)])
    assert code == 0, stderr
    assert stdout == f"fedsilo card: wrote {out / 'model_card.md'} and model_card.html\n"
    return {"md": (out / "model_card.md").read_text(), "html": (out / "model_card.html").read_text()}


def _chain(run_dir: Path) -> list[dict]:
    return lineage.read_chain(run_dir / "lineage.sqlite")


def test_card_names_the_verified_model_and_chain_head(card: dict[str, str], finished_run: Path):
    chain = _chain(finished_run)
    closing = chain[-1]["body"]
    assert f"| final model | {closing['final_model_digest']} |" in card["md"]
    assert f"| chain head | {chain[-1]['digest']} |" in card["md"]
    assert f"| records | {len(chain)} |" in card["md"]
    assert "| verifier | OK: " in card["md"]
    assert f"| initial model | {chain[0]['body']['initial_model_digest']} |" in card["md"]


def test_card_lists_every_site_with_its_fingerprint_and_count(card: dict[str, str],
                                                               finished_run: Path):
    sites = _chain(finished_run)[0]["body"]["sites"]
    total = sum(s["num_examples"] for s in sites)
    assert f"3 sites took part, declaring {total} training examples in all" in card["md"]
    for s in sites:
        assert f"| {s['site_id']} | {s['num_examples']} | {s['data_fingerprint']} | defaults |" \
            in card["md"]


def test_card_performance_is_each_sites_signed_score_and_the_worst(card: dict[str, str],
                                                                   finished_run: Path):
    chain = _chain(finished_run)
    final = chain[-1]["body"]["final_model_digest"]
    evals = [e for env in chain if env["type"] == "round" for e in env["body"].get("evaluations", [])
             if e["model_digest"] == final]
    assert len(evals) == 3
    acc = np.array([e["metrics"]["accuracy"] for e in evals])
    n = np.array([e["num_examples"] for e in evals], dtype=float)
    worst = evals[int(np.argmin(acc))]["site_id"]
    row = (f"| accuracy | 3 | {np.average(acc, weights=n):.4g} | {acc.std():.4g} | "
           f"{acc.min():.4g} | {acc.max():.4g} | {worst} ({acc.min():.4g}) |")
    assert row in card["md"]
    central = chain[-2]["body"]["metrics"]["test_accuracy"]
    assert f"| test_accuracy | {central:.4g} |" in card["md"]


def test_card_states_what_the_run_cannot_know_and_the_privacy_it_lacks(card: dict[str, str]):
    assert "Intended use: not stated in the run config" in card["md"]
    assert "No client-level differential privacy: the model carries no DP guarantee." in card["md"]
    assert "No secure aggregation: the server saw each site's update." in card["md"]
    assert "No flag was recorded in this run's rounds." in card["md"]
    for section in ("Model details", "Intended use", "Federation and training data", "Training",
                    "Privacy and security", "Robustness", "Performance", "Flags and actions",
                    "Verification", "Code and library versions"):
        assert f"## {section}\n" in card["md"]
        assert f"<h2>{section}</h2>" in card["html"]
    assert "Annex IV 2(d)" in card["md"]


def test_card_html_escapes_values(card: dict[str, str]):
    assert "<script" not in card["html"]
    assert card["html"].startswith("<!doctype html>")


def test_unverifiable_run_gets_no_card(tampered_run: Path):
    code, stdout, stderr = run_cli(["card", str(tampered_run)])
    assert code == 2 and stdout == ""
    assert stderr.startswith(f"fedsilo card: error: {tampered_run}: the lineage chain does not "
                             "verify (record 1 (round): ")
    assert stderr.endswith("; nothing is documented for it\n") and stderr.count("\n") == 1
    assert not (tampered_run / "model_card.md").exists()
    assert not (tampered_run / "model_card.html").exists()


def test_not_a_run_directory(tmp_path: Path):
    code, _, stderr = run_cli(["card", str(tmp_path)])
    assert code == 2
    assert stderr == (f"fedsilo card: error: {tmp_path}: no lineage.sqlite here "
                      "(not a fedsilo run directory?)\n")

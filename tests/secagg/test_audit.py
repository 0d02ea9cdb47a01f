"""Issue 19 point 6: a SecAgg+ run's lineage lists, counts and verifies its contributors.

A real run of the project's ServerApp and ClientApp (3 simulated sites, 2 SecAgg+ rounds)
on the in-process engine, which runs the very same server round code and site handler as
Flower's engines. Each round record must list every site in the secure sum with its
signed masked-vector digest; ``lineage verify`` must check 12 site signatures (3 sites x
2 rounds x {masked input, unmask reply}); ``lineage show`` must count 3 accepted per
round; each site's ledger must reconcile. Then the chain is tampered with as a key-holding
server (or a disk) could, and every change must fail ``verify`` naming the record.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedsilo import lineage
from fedsilo.lineage.cli import main as lineage_main
from fedsilo.lineage.envelope import seal
from fedsilo.lineage.signing import verify_unmask
from fedsilo.server.config import RunConfig
from fedsilo.simulations.runner import run_federation

SITES = [f"site-00{i}" for i in range(3)]
# declarations; sites x rounds x (masked input, unmask reply); each site's signed evaluation
# of each round's model (eval_every defaults to 1)
SIGNATURES = 3 + 3 * 2 * 2 + 3 * 2


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("secagg-audit")
    cfg = RunConfig.load(None, {"out": str(out), "run_id": "audit", "sites": 3, "rounds": 2,
                                "secagg.enabled": True})
    return run_federation(cfg, engine="inprocess").run_dir


@pytest.fixture
def run_copy(secure_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(secure_run, target)
    return target


def _chain(run_dir: Path) -> list[dict[str, Any]]:
    return lineage.read_chain(run_dir / "lineage.sqlite")


def test_round_records_list_the_sites_in_the_secure_sum_with_their_signatures(
        secure_run: Path) -> None:
    chain = _chain(secure_run)
    genesis = chain[0]["body"]
    keys = {s["site_id"]: s["public_key"] for s in genesis["sites"]}
    fingerprints = {s["site_id"]: s["data_fingerprint"] for s in genesis["sites"]}
    rounds = [e["body"] for e in chain if e["type"] == "round"]
    assert [r["status"] for r in rounds] == ["completed", "completed"]
    for body in rounds:
        assert body["accepted"] == SITES and body["rejected"] == {} and body["dropped"] == []
        assert body["secagg"]["participant_sites"] == SITES
        assert body["secagg"]["site_fates"] == dict.fromkeys(SITES, "in_sum")
        assert [c["site_id"] for c in body["contributions"]] == SITES
        for c in body["contributions"]:
            site, secagg = c["site_id"], c["detail"]["secagg"]
            assert (c["fate"], c["num_examples"], secagg["fate"]) == ("accepted", None, "in_sum")
            assert c["data_fingerprint"] == fingerprints[site]
            assert lineage.verify_contribution(keys[site], c["signature"], "audit", body["round"],
                                               c["update_digest"], c["data_fingerprint"])
            assert verify_unmask(keys[site], secagg["unmask_signature"], "audit", body["round"],
                                 secagg["unmask_digest"])
    report = lineage.verify_run(secure_run)
    assert report.ok, report.summary
    assert (report.rounds, report.site_signatures) == (2, SIGNATURES)
    assert f"; {SIGNATURES} site signatures checked;" in report.summary


def test_show_verify_contributors_and_reconcile_agree(
        secure_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lineage_main(["verify", str(secure_run)]) == 0
    assert capsys.readouterr().out.startswith(
        f"OK: 4 records, 2 rounds; {SIGNATURES} site signatures checked; closed (")
    assert lineage_main(["show", str(secure_run)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] in (["1"], ["2"])]
    # seq round status smp rep acc rej drop
    assert [row[1:8] for row in rows] == [[str(r), "completed", "3", "3", "3", "0", "0"]
                                          for r in (1, 2)]
    assert lineage_main(["show", str(secure_run), "--round", "2"]) == 0
    detail = capsys.readouterr().out
    for site in SITES:
        assert f"  {site:<16} {'accepted':<9} {'secret':>8}  " in detail
    genesis = _chain(secure_run)[0]["body"]
    found = lineage.contributors(secure_run)
    assert [(c.site_id, c.data_fingerprint, c.rounds) for c in found] == [
        (s["site_id"], s["data_fingerprint"], [1, 2]) for s in genesis["sites"]]
    for site in SITES:
        ledger = secure_run / "sites" / site / "ledger.jsonl"
        entries = lineage.SiteLedger(ledger).entries()
        assert [(e["round"], e["status"]) for e in entries] == [
            (1, "sent"), (1, "unmasked"), (2, "sent"), (2, "unmasked")]
        assert lineage.reconcile(secure_run, ledger) == []


# --- tampering -------------------------------------------------------------------------------
def _reseal(run_dir: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """A key-holding server edits bodies and re-digests / re-signs the whole chain."""
    key = lineage.load_or_create_key(run_dir / "keys" / "server.pem")
    envs = _chain(run_dir)
    edit(envs)
    rows, prev = [], None
    for i, e in enumerate(envs):
        data, digest, sig = seal(key, i, e["type"], prev, e["body"])
        rows.append((i, e["type"], digest, sig, data.decode()))
        prev = digest
    _store(run_dir, rows)


def _store(run_dir: Path, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(run_dir / "lineage.sqlite") as conn:
        conn.execute("DELETE FROM records")
        conn.executemany(
            "INSERT INTO records (seq, type, digest, signature, signed) VALUES (?,?,?,?,?)", rows)


def _flip(hex_text: str) -> str:
    return hex_text[:-1] + ("0" if hex_text[-1] != "0" else "1")


def _contribution(envs: list[dict[str, Any]], seq: int, site: str) -> dict[str, Any]:
    return next(c for c in envs[seq]["body"]["contributions"] if c["site_id"] == site)


def _set(seq: int, site: str, path: tuple[str, ...], value: Callable[[Any], Any]
         ) -> Callable[[list[dict[str, Any]]], None]:
    def edit(envs: list[dict[str, Any]]) -> None:
        obj = _contribution(envs, seq, site)
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value(obj[path[-1]])

    return edit


TAMPERS: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "masked-input signature altered": (
        _set(1, "site-000", ("signature",), _flip),
        "record 1 (round): site signature of 'site-000' invalid"),
    "masked-input digest replaced": (
        _set(2, "site-002", ("update_digest",), _flip),
        "record 2 (round): site signature of 'site-002' invalid"),
    "unmask signature altered": (
        _set(2, "site-001", ("detail", "secagg", "unmask_signature"), _flip),
        "record 2 (round): site signature of 'site-001' over its SecAgg+ unmask reply invalid"),
    "unmask digest replaced": (
        _set(1, "site-002", ("detail", "secagg", "unmask_digest"), _flip),
        "record 1 (round): site signature of 'site-002' over its SecAgg+ unmask reply invalid"),
    "unmask signature upper-cased": (
        _set(1, "site-001", ("detail", "secagg", "unmask_signature"), str.upper),
        "record 1 (round): site 'site-001' contribution detail.secagg.unmask_signature: "
        "expected 128 lower-case hex characters"),
    "masked-input signature upper-cased": (
        _set(1, "site-000", ("signature",), str.upper),
        "record 1 (round): body.contributions[0].signature: expected 128 lowercase hex"),
    "secure-sum fate invented": (
        _set(2, "site-000", ("detail", "secagg", "fate"), lambda _: "trusted"),
        "record 2 (round): site 'site-000' contribution detail.secagg: expected an object with "
        "a fate in ['aborted', 'dropped', 'in_sum', 'recovered']"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_secagg_contribution_fails_verify_naming_the_record(
        run_copy: Path, tamper: str) -> None:
    edit, expected = TAMPERS[tamper]
    _reseal(run_copy, edit)
    report = lineage.verify_run(run_copy)
    assert not report.ok
    assert report.first_failure is not None and report.first_failure.startswith(expected), \
        report.first_failure


def test_upper_cased_server_signature_fails_verify(run_copy: Path) -> None:
    with sqlite3.connect(run_copy / "lineage.sqlite") as conn:
        sig = conn.execute("SELECT signature FROM records WHERE seq = 1").fetchone()[0]
        conn.execute("UPDATE records SET signature = ? WHERE seq = 1", (sig.upper(),))
    assert bytes.fromhex(sig.upper()) == bytes.fromhex(sig)  # same bytes, other encoding
    report = lineage.verify_run(run_copy)
    assert report.first_failure == ("record 1 (round): server signature is not 128 lower-case "
                                     "hex characters (its one encoding)")


def test_stripped_unmask_signature_is_caught_by_the_sites_ledger(run_copy: Path) -> None:
    """A server that drops a site's unmask signature from its record still has a chain that
    verifies (one signature fewer); the site's ledger is what exposes it."""

    def strip(envs: list[dict[str, Any]]) -> None:
        secagg = _contribution(envs, 1, "site-001")["detail"]["secagg"]
        del secagg["unmask_digest"], secagg["unmask_signature"]

    ledger = run_copy / "sites" / "site-001" / "ledger.jsonl"
    unmasked = lineage.SiteLedger(ledger).entries()[1]
    _reseal(run_copy, strip)
    report = lineage.verify_run(run_copy)
    assert report.ok and report.site_signatures == SIGNATURES - 1
    assert lineage.reconcile(run_copy, ledger) == [
        f"ledger line 2 (round 1, unmasked): unmask reply {unmasked['unmask_digest']} is not "
        "in the chain"]

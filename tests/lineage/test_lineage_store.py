"""Records (dict round-trip, validation), the SQLite writer, resume and crash prefixes."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedsilo.lineage import (
    SCHEMA_VERSION,
    ClosingRecord,
    GenesisRecord,
    LineageError,
    LineageWriter,
    ResumeRecord,
    RoundRecord,
    SiteContribution,
    SiteIdentity,
    canonical_json,
    load_or_create_key,
    public_key_hex,
    read_chain,
    record_from_dict,
    verify_run,
)
from fedsilo.lineage.synthetic import SyntheticRun

D0 = "sha256:" + "00" * 32
D1 = "sha256:" + "11" * 32


def _genesis(key_hex: str) -> GenesisRecord:
    return GenesisRecord(
        run_id="r1",
        created_at="2026-01-01T00:00:00+00:00",
        config={"rounds": 2},
        code_version={"fedsilo": "0.1.0"},
        initial_model_digest=D0,
        server_public_key=key_hex,
        sites=[SiteIdentity("s1", "aa" * 32, D1, {"max_epsilon": 3.0})],
    )


def test_records_round_trip_through_dict(pristine_run: SyntheticRun) -> None:
    for env in read_chain(pristine_run.run_dir / "lineage.sqlite"):
        record = record_from_dict(env["type"], env["body"])
        assert record.to_dict() == env["body"]
        assert env["type"] == type(record).TYPE


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("run_id"), r"missing fields \['run_id'\]"),
        (lambda b: b.update(extra=1), r"unknown fields \['extra'\]"),
        (lambda b: b.update(initial_model_digest="sha256:XX"), "initial_model_digest: expected"),
        (lambda b: b.update(server_public_key="ab"), "server_public_key: expected 64"),
        (lambda b: b["sites"][0].update(site_id=""), r"sites\[0\].site_id: expected a non-empty"),
        (lambda b: b.update(config=[]), "config: expected a JSON object"),
    ],
)
def test_genesis_validation_names_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    body = _genesis("bb" * 32).to_dict()
    mutate(body)
    with pytest.raises(ValueError, match=message):
        GenesisRecord.from_dict(body)


def test_contribution_and_round_validation() -> None:
    c = SiteContribution("s1", D0, 5, D1, "ab" * 64).to_dict()
    SiteContribution.from_dict(c)
    with pytest.raises(ValueError, match="num_examples: expected an int >= 0"):
        SiteContribution.from_dict({**c, "num_examples": -1})
    with pytest.raises(ValueError, match="fate: expected 'accepted' or 'rejected'"):
        SiteContribution.from_dict({**c, "fate": "maybe"})
    with pytest.raises(ValueError, match="score: expected a finite number or null"):
        SiteContribution.from_dict({**c, "score": float("nan")})
    body = RoundRecord(1, [], [], [], {}, [], [], D0, D0, {}, {}, {}).to_dict()
    with pytest.raises(ValueError, match=r"timings: expected an object name -> seconds"):
        RoundRecord.from_dict({**body, "timings": {"x": "slow"}})
    with pytest.raises(ValueError, match=r"contributions\[0\].signature: expected 128"):
        RoundRecord.from_dict({**body, "contributions": [{**c, "signature": "00"}]})


def test_writer_rules(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k.pem")
    with LineageWriter.create(tmp_path / "l.sqlite", key) as w:
        closing = ClosingRecord("rounds_done", "", 0, D0)
        with pytest.raises(ValueError, match="first record must be a GenesisRecord"):
            w.append(closing)
        with pytest.raises(ValueError, match="server_public_key does not match"):
            w.append(_genesis("bb" * 32))
        head = w.append(_genesis(public_key_hex(key)))
        assert w.head == head and w.seq == 1
        with pytest.raises(ValueError, match="only the first"):
            w.append(_genesis(public_key_hex(key)))
        with pytest.raises(ValueError, match="not a lineage record"):
            w.append({"type": "round"})  # type: ignore[arg-type]
        w.append(closing)
        with pytest.raises(ValueError, match="already has a closing record"):
            w.append(ResumeRecord("t", 0, "x"))
    with pytest.raises(LineageError, match="LineageWriter is closed"):
        w.append(closing)
    with pytest.raises(LineageError, match="already exists"):
        LineageWriter.create(tmp_path / "l.sqlite", key)


def test_stored_envelope_layout(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k.pem")
    with LineageWriter.create(tmp_path / "l.sqlite", key) as w:
        digest = w.append(_genesis(public_key_hex(key)))
    [env] = read_chain(tmp_path / "l.sqlite")
    signed = {k: env[k] for k in ("schema", "seq", "type", "prev", "body")}
    assert signed["schema"] == SCHEMA_VERSION and signed["prev"] is None
    assert digest == env["digest"] == "sha256:" + hashlib.sha256(canonical_json(signed)).hexdigest()
    key.public_key().verify(bytes.fromhex(env["signature"]), digest.encode())
    # closed cleanly: one self-contained file in rollback-journal mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "l.sqlite"]
    assert (tmp_path / "l.sqlite").read_bytes()[18:20] == b"\x01\x01"


def test_open_continues_and_checks(run: SyntheticRun) -> None:
    db = run.run_dir / "lineage.sqlite"
    key = load_or_create_key(run.run_dir / "keys" / "server.pem")
    other = load_or_create_key(run.run_dir / "keys" / "other.pem")
    with pytest.raises(LineageError, match="chain is closed"):
        LineageWriter.open(db, key)
    with sqlite3.connect(db) as conn:  # reopen an unfinished run: drop the closing record
        conn.execute("DELETE FROM records WHERE type = 'closing'")
    (run.run_dir / "model.npz").unlink()
    with pytest.raises(LineageError, match="not this chain's server key"):
        LineageWriter.open(db, other)
    with LineageWriter.open(db, key) as w:
        assert w.head == run.digests[-2]
        w.append(ResumeRecord("2026-01-02T00:00:00+00:00", 4, "operator restart"))
        w.append(ClosingRecord("interrupted", "stopped", 4, run.model_digests[-1]))
    report = verify_run(db)
    assert report.ok, report.summary  # interrupted: a missing model.npz is noted, not failed
    assert "no model.npz (run ended: interrupted)" in report.summary


def test_skipped_round_resume_and_missing_model(tmp_path: Path) -> None:
    """Round 2 skipped (model kept), crash, resume from the skipped round's checkpoint."""
    key = load_or_create_key(tmp_path / "keys" / "server.pem")
    rounds = []
    for r, (m_in, m_out, status) in enumerate(
        [(D0, D1, "completed"), (D1, D1, "skipped"), (D1, D0, "completed")], start=1
    ):
        rounds.append(RoundRecord(r, [], [], [], {}, [], [], m_in, m_out, {}, {}, {}, status))
    with LineageWriter.create(tmp_path / "lineage.sqlite", key) as w:
        w.append(_genesis(public_key_hex(key)))
        w.append(rounds[0])
        w.append(rounds[1])
        w.append(ResumeRecord("t", 2, "crash"))
        w.append(rounds[2])
        w.append(ClosingRecord("rounds_done", "", 3, D0))
    report = verify_run(tmp_path)
    assert not report.ok
    assert report.first_failure == (
        f"record 5 (closing): final model {D0} but model.npz is missing"
    )
    bad = RoundRecord(2, [], [], [], {}, [], [], D1, D0, {}, {}, {}, "skipped")
    with LineageWriter.create(tmp_path / "b.sqlite", key) as w:
        w.append(_genesis(public_key_hex(key)))
        w.append(rounds[0])
        w.append(bad)
    assert verify_run(tmp_path / "b.sqlite").first_failure == (
        "record 2 (round): skipped round 2 changed the model"
    )


def test_open_refuses_tampered_chain(run: SyntheticRun) -> None:
    db = run.run_dir / "lineage.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE records SET digest = ? WHERE seq = 1", (D0,))
    key = load_or_create_key(run.run_dir / "keys" / "server.pem")
    with pytest.raises(LineageError, match=r"cannot continue an invalid chain: .*record 1"):
        LineageWriter.open(db, key)


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from fedsilo.lineage.synthetic import build_synthetic_run
    from fedsilo.lineage import store
    append = store.LineageWriter.append
    def dying_append(self, record):
        digest = append(self, record)
        if self.seq == 4:
            os._exit(0)  # crash right after the 4th record committed, WAL still open
        return digest
    store.LineageWriter.append = dying_append
    build_synthetic_run(Path(sys.argv[1]), rounds=3, sites=2, ledgers=False)
    """
)


def test_crash_leaves_valid_prefix(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(run_dir)], check=True, env=env)
    assert (run_dir / "lineage.sqlite-wal").exists()  # the process died with WAL mode on
    assert not (run_dir / "model.npz").exists()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    report = verify_run(run_dir)
    assert report.ok, report.summary
    assert report.records == 4 and not report.closed
    assert "open chain" in report.summary
    # read from a private copy: the crashed run's -wal/-shm are neither created nor touched
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "lineage.sqlite", alone / "lineage.sqlite")
    with pytest.raises(LineageError, match="in WAL mode .* lineage.sqlite-wal file is missing"):
        verify_run(alone)
    assert sorted(p.name for p in alone.iterdir()) == ["lineage.sqlite"]

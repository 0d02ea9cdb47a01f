"""The `fedsilo lineage` CLI: outputs, exit codes, and point 9 (bad input never tracebacks,
inputs are never written)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from fedsilo.lineage.cli import add_lineage_parser, main
from fedsilo.lineage.synthetic import SyntheticRun


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (recursively) with its content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_ok_and_read_only(pristine_run: SyntheticRun, capsys) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(pristine_run.run_dir)
    code, out, err = run_cli(capsys, "verify", pristine_run.run_dir)
    assert code == 0 and err == ""
    # default mode: 5 declarations + the last attestation of each of the 5 site chains
    assert out.startswith(
        "OK: 8 records, 4 rounds; 10 site signatures checked; closed "
        "(rounds_done); final model matches model.npz; 1 server signature checked; default "
        "mode (every digest and link; the head record's server signature and the last "
        "attestation of each of 5 site chains; --all-signatures checks each); server key "
        "ed25519:"
    )
    assert out.count("\n") == 1
    for argv in (
        ["show", pristine_run.run_dir],
        ["contributors", pristine_run.run_dir],
        ["export", pristine_run.run_dir, "--format", "jsonl"],
        ["reconcile", pristine_run.run_dir, pristine_run.run_dir / "sites/site-000/ledger.jsonl"],
    ):
        assert run_cli(capsys, *argv)[0] == 0
    assert snapshot(pristine_run.run_dir) == before  # no -wal/-shm, nothing rewritten


def test_verify_json_and_options(pristine_run: SyntheticRun, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(capsys, "verify", pristine_run.run_dir, "--json", "--workers", 1)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["site_signatures"] == 10
    assert report["server_signatures"] == 1 and not report["all_signatures"]
    code, out, _ = run_cli(capsys, "verify", pristine_run.run_dir, "--all-signatures", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["site_signatures"] == 23
    assert report["server_signatures"] == 8 and report["all_signatures"]
    code, out, _ = run_cli(capsys, "verify", pristine_run.run_dir, "--all-signatures")
    assert code == 0 and out.startswith("OK: 8 records, 4 rounds; 23 site signatures checked; ")
    assert "; 8 server signatures checked; mode --all-signatures (every signature); " in out
    code, out, _ = run_cli(capsys, "verify", pristine_run.run_dir, "--skip-site-signatures")
    assert code == 0 and "site signatures NOT checked" in out
    code, out, _ = run_cli(capsys, "verify", pristine_run.run_dir, "--server-key", "ab" * 32)
    assert code == 1 and out.startswith("FAILED: record 0 (genesis): server key ed25519:")
    code, _, err = run_cli(capsys, "verify", pristine_run.run_dir, "--workers", 0)
    assert code == 2 and err == "fedsilo lineage: error: --workers must be >= 1, got 0\n"


def test_verify_failure_names_record(run: SyntheticRun, capsys) -> None:  # type: ignore[no-untyped-def]
    with sqlite3.connect(run.run_dir / "lineage.sqlite") as conn:
        conn.execute("DELETE FROM records WHERE seq = 3")
    code, out, _ = run_cli(capsys, "verify", run.run_dir)
    assert code == 1
    assert out == (
        "FAILED: record 3 (round): seq is 4 (row 4), expected 3: "
        "records missing, duplicated or reordered\n"
    )


def test_show(pristine_run: SyntheticRun, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(capsys, "show", pristine_run.run_dir)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("run synthetic-0  started 2026-01-01")
    assert "sites 4 (+1 joined)  records 8" in lines[0]
    # rounds and the resume record (after round 3), in chain order: the interruption shows
    assert [ln.split()[1] for ln in lines[2:7]] == ["1", "2", "3", "resumed", "4"]
    assert lines[5].split(" at ")[0].split() == [
        "5", "resumed", "from", "the", "checkpoint", "of", "round", "3"]
    assert lines[-1].startswith("closed: rounds_done after 4 rounds, final model ")
    code, out, _ = run_cli(capsys, "show", pristine_run.run_dir, "--round", 3)
    assert "  rejected site-001: policy: epsilon ceiling" in out.splitlines()
    code, out, _ = run_cli(capsys, "show", pristine_run.run_dir, "--json")
    assert [r["round"] for r in json.loads(out)] == [1, 2, 3, 4]
    code, _, err = run_cli(capsys, "show", pristine_run.run_dir, "--round", 99)
    assert code == 2 and err == "fedsilo lineage: error: round 99 is not in the chain\n"


def test_contributors_and_export_cli(pristine_run: SyntheticRun, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(capsys, "contributors", pristine_run.run_dir)
    assert code == 0
    assert out.splitlines()[1:] == [
        f"{s:<16} {fp:<20} {r}"
        for s, fp, r in [
            ("site-000", "c1be54fa9b92", "1,4"),
            ("site-001", "225311c9f60b", "1-2"),
            ("site-002", "ea45ee9540ab", "1-4"),
            ("site-003", "83cc5b6956a3", "1-4"),
            ("site-late", "c6e78312fb7e", "2-4"),
        ]
    ]
    code, out, _ = run_cli(
        capsys, "contributors", pristine_run.run_dir, "--model", pristine_run.model_digests[0]
    )
    assert out == "no contributors (the initial model)\n"
    code, _, err = run_cli(capsys, "contributors", pristine_run.run_dir, "--model", "sha256:00")
    assert code == 2 and "was not produced by any round" in err
    code, _, _ = run_cli(
        capsys, "export", pristine_run.run_dir, "--format", "prov-json", "-o", tmp_path / "p.json"
    )
    assert code == 0 and "fedsilo:server" in json.loads((tmp_path / "p.json").read_text())["agent"]


def test_reconcile_cli_mismatch_exit_1(run: SyntheticRun, capsys) -> None:  # type: ignore[no-untyped-def]
    ledger = run.run_dir / "sites/site-003/ledger.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[1:]))
    code, out, _ = run_cli(capsys, "reconcile", run.run_dir, ledger)
    assert code == 1
    assert out.splitlines()[-1] == f"1 mismatches between {ledger} and the chain"
    assert out.startswith("chain record 1 (round 1): contribution of 'site-003'")


def test_add_lineage_parser_integrates(pristine_run: SyntheticRun, capsys) -> None:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(prog="fedsilo")
    add_lineage_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lineage", "verify", str(pristine_run.run_dir)])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.startswith("OK: ")


# --- point 9: bad input ----------------------------------------------------------------------
def _missing(d: Path, run: Path) -> Path:
    return d / "nope"


def _empty_dir(d: Path, run: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


def _text_file(d: Path, run: Path) -> Path:
    (d / "notes.txt").write_text("hello\n")
    return d / "notes.txt"


def _empty_file(d: Path, run: Path) -> Path:
    (d / "lineage.sqlite").write_bytes(b"")
    return d


def _truncated(keep: int):  # type: ignore[no-untyped-def]
    def make(d: Path, run: Path) -> Path:
        data = (run / "lineage.sqlite").read_bytes()
        (d / "lineage.sqlite").write_bytes(data[: keep if keep > 0 else len(data) // 2])
        return d

    return make


def _garbage_pages(d: Path, run: Path) -> Path:
    data = bytearray((run / "lineage.sqlite").read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # clobber the schema page after the header
    (d / "lineage.sqlite").write_bytes(bytes(data))
    return d


def _foreign_sqlite(d: Path, run: Path) -> Path:
    with sqlite3.connect(d / "lineage.sqlite") as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    return d


def _wrong_schema(d: Path, run: Path) -> Path:
    shutil.copy(run / "lineage.sqlite", d / "lineage.sqlite")
    with sqlite3.connect(d / "lineage.sqlite") as conn:
        conn.execute("UPDATE meta SET value = 'fedsilo.lineage/99'")
    return d


def _jsonl_given(d: Path, run: Path) -> Path:
    (d / "chain.jsonl").write_text('{"schema": "fedsilo.lineage/1"}\n')
    return d / "chain.jsonl"


BAD_INPUTS = {
    "missing": (_missing, "no such file or directory"),
    "dir-without-lineage": (_empty_dir, "no lineage.sqlite here"),
    "text-file": (_text_file, "not a SQLite database"),
    "empty-file": (_empty_file, "not a fedsilo lineage store"),
    "truncated-header": (_truncated(50), "corrupted SQLite file"),
    "truncated-half": (_truncated(0), "corrupted SQLite file"),
    "garbage-pages": (_garbage_pages, "corrupted SQLite file"),
    "foreign-sqlite": (_foreign_sqlite, "not a fedsilo lineage store"),
    "wrong-schema": (_wrong_schema, "unsupported lineage schema 'fedsilo.lineage/99'"),
    "jsonl-file": (_jsonl_given, "not a SQLite database"),
}
COMMANDS = {
    "verify": [],
    "show": [],
    "contributors": [],
    "export": ["--format", "jsonl"],
    "reconcile": ["LEDGER"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2(
    pristine_run: SyntheticRun,
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
    command: str,
    bad: str,
) -> None:
    make, expected = BAD_INPUTS[bad]
    work = tmp_path / "work"
    work.mkdir()
    target = make(work, pristine_run.run_dir)
    ledger = pristine_run.run_dir / "sites/site-000/ledger.jsonl"
    extra = [str(ledger) if a == "LEDGER" else a for a in COMMANDS[command]]
    before = snapshot(work)
    code, out, err = run_cli(capsys, command, target, *extra)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("fedsilo lineage: error: "), err
    assert expected in err
    assert "Traceback" not in err + out
    assert snapshot(work) == before  # nothing written to (or next to) the input


def test_bad_ledger_and_args(pristine_run: SyntheticRun, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "l.jsonl").write_bytes(b"\x00\xff garbage\n")
    code, _, err = run_cli(capsys, "reconcile", pristine_run.run_dir, tmp_path / "l.jsonl")
    assert code == 2 and "line 1: not a ledger entry" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "verify")
    assert code == 2
    assert err == "fedsilo lineage: error: the following arguments are required: RUN_DIR\n"
    code, _, err = run_cli(capsys, "export", pristine_run.run_dir, "--format", "xml")
    assert code == 2 and err.startswith("fedsilo lineage: error: argument --format")
    code, _, err = run_cli(
        capsys,
        "export",
        pristine_run.run_dir,
        "--format",
        "jsonl",
        "-o",
        pristine_run.run_dir / "lineage.sqlite",
    )
    assert code == 2 and "refusing to overwrite an input of the run" in err


@pytest.mark.parametrize("command", [["lineage", "show"], ["lineage", "verify"], ["strategies"]])
def test_a_reader_that_left_is_not_an_error(pristine_run: SyntheticRun, command: list[str]) -> None:
    """``fedsilo ... | head``: the pipe closes before fedsilo writes; exit 0, nothing on stderr."""
    import os
    import subprocess
    import sys

    argv = [*command, str(pristine_run.run_dir)] if command[0] == "lineage" else command
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        res = subprocess.run([sys.executable, "-m", "fedsilo.cli", *argv], stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (res.returncode, res.stderr) == (0, "")


def test_a_reader_that_left_keeps_a_failed_verification_failed(run: SyntheticRun) -> None:
    import os
    import subprocess
    import sys

    with sqlite3.connect(run.run_dir / "lineage.sqlite") as db:  # tamper with one record
        seq, signed = db.execute("SELECT seq, signed FROM records WHERE type = 'round'").fetchone()
        db.execute("UPDATE records SET signed = ? WHERE seq = ?", (signed.replace("1", "2", 1), seq))
    read, write = os.pipe()
    os.close(read)
    try:
        res = subprocess.run([sys.executable, "-m", "fedsilo.cli", "lineage", "verify",
                              str(run.run_dir)], stdout=write, stderr=subprocess.PIPE, text=True,
                             timeout=120)
    finally:
        os.close(write)
    assert (res.returncode, res.stderr) == (1, "")

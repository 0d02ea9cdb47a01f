"""contributors (transitive, resume-aware), reconcile (named mismatches), exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsilo.lineage import (
    ClosingRecord,
    GenesisRecord,
    LineageError,
    LineageWriter,
    ResumeRecord,
    RoundRecord,
    SiteContribution,
    SiteIdentity,
    SiteLedger,
    contributors,
    data_fingerprint,
    export_jsonl,
    export_prov_json,
    load_or_create_key,
    public_key_hex,
    read_chain,
    read_jsonl,
    reconcile,
    sign_contribution,
    update_digest,
    verify_envelopes,
    verify_run,
)
from fedsilo.lineage.synthetic import SyntheticRun, build_synthetic_run


def _model(i: int) -> str:
    return "sha256:" + f"{i:02x}" * 32


def _write_resumed_chain(run_dir: Path) -> None:
    """Sites A, B, C. r1: A, B accepted. r2: C accepted, A rejected. r3: B accepted, then
    the server crashes, resumes from round 2 and re-runs r3 with A accepted."""
    run_dir.mkdir()
    server = load_or_create_key(run_dir / "keys" / "server.pem")
    keys = {s: load_or_create_key(run_dir / "sites" / s / "key.pem") for s in "ABC"}
    fps = {s: data_fingerprint({"x": np.full(3, ord(s))}, preprocessing={}) for s in "ABC"}

    def contrib(site: str, r: int, fate: str = "accepted") -> SiteContribution:
        ud = update_digest(np.full(4, r * 10 + ord(site), np.float32))
        sig = sign_contribution(keys[site], "resumed", r, ud, fps[site])
        return SiteContribution(site, ud, 10, fps[site], sig, fate=fate)

    def rnd(r: int, cs: list[SiteContribution], m_in: int, m_out: int) -> RoundRecord:
        return RoundRecord(
            r,
            [c.site_id for c in cs],
            [c.site_id for c in cs],
            [c.site_id for c in cs if c.fate == "accepted"],
            {c.site_id: "norm" for c in cs if c.fate == "rejected"},
            [],
            cs,
            _model(m_in),
            _model(m_out),
            {"name": "fedavg"},
            {},
            {},
        )

    with LineageWriter.create(run_dir / "lineage.sqlite", server) as w:
        w.append(
            GenesisRecord(
                "resumed",
                "t0",
                {},
                {},
                _model(0),
                public_key_hex(server),
                [SiteIdentity(s, public_key_hex(keys[s]), fps[s], {}) for s in "ABC"],
            )
        )
        w.append(rnd(1, [contrib("A", 1), contrib("B", 1)], 0, 1))
        w.append(rnd(2, [contrib("C", 2), contrib("A", 2, "rejected")], 1, 2))
        w.append(rnd(3, [contrib("B", 3)], 2, 3))
        w.append(ResumeRecord("t1", 2, "crash"))
        w.append(rnd(3, [contrib("A", 3)], 2, 4))
        w.append(ClosingRecord("rounds_done", "", 3, None))


def _summary(found: list) -> list[tuple[str, list[int]]]:
    return [(c.site_id, c.rounds) for c in found]


def test_contributors_follow_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _write_resumed_chain(run_dir)
    report = verify_run(run_dir)
    assert report.ok, report.summary
    assert _summary(contributors(run_dir)) == [("A", [1, 3]), ("B", [1]), ("C", [2])]
    assert _summary(contributors(run_dir, _model(3))) == [("A", [1]), ("B", [1, 3]), ("C", [2])]
    assert _summary(contributors(run_dir, _model(1))) == [("A", [1]), ("B", [1])]
    assert contributors(run_dir, _model(0)) == []
    with pytest.raises(LineageError, match="was not produced by any round"):
        contributors(run_dir, _model(9))


def test_contributors_of_synthetic_run(pristine_run: SyntheticRun) -> None:
    found = contributors(pristine_run.run_dir)
    assert [c.site_id for c in found] == [
        "site-000",
        "site-001",
        "site-002",
        "site-003",
        "site-late",
    ]
    # every 5th contribution is rejected: #5 (r2 site-000), #10 (r3 site-000, site-001
    # refused r3), #15 (r4 site-001)
    assert _summary(found) == [
        ("site-000", [1, 4]),
        ("site-001", [1, 2]),
        ("site-002", [1, 2, 3, 4]),
        ("site-003", [1, 2, 3, 4]),
        ("site-late", [2, 3, 4]),
    ]
    assert contributors(pristine_run.run_dir, pristine_run.model_digests[1])[0].rounds == [1]


def test_reconcile_clean(pristine_run: SyntheticRun) -> None:
    for site in pristine_run.site_ids:
        assert (
            reconcile(pristine_run.run_dir, pristine_run.run_dir / "sites" / site / "ledger.jsonl")
            == []
        )


def _rewrite(ledger: Path, edit) -> None:  # type: ignore[no-untyped-def]
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    ledger.write_text("".join(json.dumps(x) + "\n" for x in edit(lines)))


def test_reconcile_names_each_mismatch(run: SyntheticRun) -> None:
    ledger = run.run_dir / "sites" / "site-001" / "ledger.jsonl"

    def edit(lines: list[dict]) -> list[dict]:
        lines[0]["num_examples"] += 1  # r1 sent: wrong count
        refused = next(x for x in lines if x["status"] == "refused")
        refused["reason"] = "maintenance window"  # r3 refusal reason differs
        other_run = {**lines[1], "run_id": "another-run"}  # ignored
        phantom = {**lines[1], "round": 9}  # never recorded
        return [lines[0], refused, other_run, phantom] + lines[3:]  # r2 entry dropped

    _rewrite(ledger, edit)
    assert reconcile(run.run_dir, ledger) == [
        "ledger line 1 (round 1, sent): num_examples differs: ledger "
        f"{json.loads(ledger.read_text().splitlines()[0])['num_examples']}, chain record 1 "
        f"{json.loads(ledger.read_text().splitlines()[0])['num_examples'] - 1}",
        "ledger line 2 (round 3, refused): refusal reason differs: ledger 'maintenance window',"
        " chain record 4 'policy: epsilon ceiling'",
        "ledger line 4 (round 9, sent): update "
        f"{json.loads(ledger.read_text().splitlines()[3])['update_digest']} is not in the chain",
        "chain record 3 (round 2): contribution of 'site-001' with update "
        f"{read_chain(run.run_dir / 'lineage.sqlite')[3]['body']['contributions'][1]['update_digest']}"
        " is not in the site's ledger",
    ]


def test_reconcile_accepts_prefixed_refusal(run: SyntheticRun) -> None:
    """Servers may record a refusal as "refused by site: <reason>"."""
    from fedsilo.lineage.envelope import seal

    db = run.run_dir / "lineage.sqlite"
    key = load_or_create_key(run.run_dir / "keys" / "server.pem")
    envs = read_chain(db)
    envs[4]["body"]["rejected"]["site-001"] = "refused by site: policy: epsilon ceiling"
    import sqlite3

    with sqlite3.connect(db) as conn:
        prev = envs[3]["digest"]
        for i in range(4, len(envs)):
            data, digest, sig = seal(key, i, envs[i]["type"], prev, envs[i]["body"])
            conn.execute(
                "UPDATE records SET digest=?, signature=?, signed=? WHERE seq=?",
                (digest, sig, data.decode(), i),
            )
            prev = digest
    assert verify_run(run.run_dir).ok
    assert reconcile(run.run_dir, run.run_dir / "sites/site-001/ledger.jsonl") == []


def test_reconcile_bad_ledgers(run: SyntheticRun, tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="ledger file not found"):
        reconcile(run.run_dir, tmp_path / "missing.jsonl")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(
        (run.run_dir / "sites/site-000/ledger.jsonl").read_bytes()
        + (run.run_dir / "sites/site-001/ledger.jsonl").read_bytes()
    )
    with pytest.raises(LineageError, match="cannot tell whose ledger it is"):
        reconcile(run.run_dir, mixed)
    assert reconcile(run.run_dir, mixed, site_id="site-000") == []  # other sites ignored
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"run_id": "x"}\n')
    with pytest.raises(LineageError, match="line 1: not a ledger entry"):
        reconcile(run.run_dir, broken)


def test_site_ledger(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path / "site" / "ledger.jsonl")
    entry = {"run_id": "r", "site_id": "s", "round": 1, "status": "refused", "reason": "eps"}
    stored = ledger.append(entry)
    assert stored["time"].endswith("+00:00")
    assert (tmp_path / "site" / "ledger.jsonl").stat().st_mode & 0o777 == 0o600
    with (tmp_path / "site" / "ledger.jsonl").open("ab") as handle:
        handle.write(b'{"run_id": "r", "si')  # torn by a crash
    ledger.append({**entry, "round": 2})
    lines = (tmp_path / "site" / "ledger.jsonl").read_bytes().split(b"\n")
    assert lines[1] == b'{"run_id": "r", "si' and b'"round":2' in lines[2]
    with pytest.raises(LineageError, match="line 2: not a ledger entry"):
        ledger.entries()
    with pytest.raises(ValueError, match="missing field 'update_digest'"):
        ledger.append({**entry, "status": "sent"})
    with pytest.raises(ValueError, match="status must be 'sent', 'refused' or 'unmasked'"):
        ledger.append({**entry, "status": "lost"})


def _check_prov(doc: dict, chain: list[dict]) -> None:
    assert set(doc) == {
        "prefix",
        "entity",
        "activity",
        "agent",
        "wasGeneratedBy",
        "used",
        "wasAssociatedWith",
        "wasAttributedTo",
        "wasDerivedFrom",
    }
    rounds = [e for e in chain if e["type"] == "round"]
    contribs = [c for e in rounds for c in e["body"]["contributions"]]
    types = [v["prov:type"] for v in doc["entity"].values()]
    models = {chain[0]["body"]["initial_model_digest"]} | {e["body"]["model_out"] for e in rounds}
    assert types.count("fedsilo:Model") == len(models)
    assert types.count("fedsilo:Update") == len(contribs)
    assert types.count("fedsilo:DataFingerprint") == len({c["data_fingerprint"] for c in contribs})
    acts = [v["prov:type"] for v in doc["activity"].values()]
    assert acts.count("fedsilo:Round") == len(rounds)
    assert acts.count("fedsilo:LocalTraining") == len(contribs)
    assert doc["agent"]["fedsilo:server"]["prov:type"] == "prov:SoftwareAgent"
    ids = set(doc["entity"]) | set(doc["activity"]) | set(doc["agent"])
    for kind in (
        "wasGeneratedBy",
        "used",
        "wasAssociatedWith",
        "wasAttributedTo",
        "wasDerivedFrom",
    ):
        assert doc[kind], kind
        for rel in doc[kind].values():
            assert set(rel.values()) <= ids, (kind, rel)
    accepted = sum(c["fate"] == "accepted" for c in contribs)
    used_updates = [
        r
        for r in doc["used"].values()
        if doc["entity"].get(r["prov:entity"], {}).get("prov:type") == "fedsilo:Update"
    ]
    assert len(used_updates) == accepted


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rounds=st.integers(1, 3),
    sites=st.integers(1, 3),
    seed=st.integers(0, 1000),
    reject_every=st.sampled_from([0, 2, 3]),
)
def test_exports_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, rounds: int, sites: int, seed: int, reject_every: int
) -> None:
    base = tmp_path_factory.mktemp("prop")
    built = build_synthetic_run(
        base / "run",
        rounds=rounds,
        sites=sites,
        seed=seed,
        reject_every=reject_every,
        ledgers=False,
        durable=False,
    )
    chain = read_chain(built.run_dir / "lineage.sqlite")
    assert export_jsonl(built.run_dir, base / "out.jsonl") == len(chain)
    again = read_jsonl(base / "out.jsonl")
    assert again == chain
    assert verify_envelopes(again).ok
    doc = export_prov_json(built.run_dir, base / "prov.json")
    assert json.loads((base / "prov.json").read_text()) == doc
    _check_prov(doc, chain)


def test_prov_of_pristine_run(pristine_run: SyntheticRun, tmp_path: Path) -> None:
    doc = export_prov_json(pristine_run.run_dir, tmp_path / "p.json")
    _check_prov(doc, read_chain(pristine_run.run_dir / "lineage.sqlite"))
    assert len(doc["agent"]) == 1 + 5


def test_export_refuses_to_overwrite_inputs(pristine_run: SyntheticRun) -> None:
    with pytest.raises(LineageError, match="refusing to overwrite an input"):
        export_jsonl(pristine_run.run_dir, pristine_run.run_dir / "lineage.sqlite")
    with pytest.raises(LineageError, match="refusing to overwrite an input"):
        export_prov_json(pristine_run.run_dir, pristine_run.run_dir / "model.npz")

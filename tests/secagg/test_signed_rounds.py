"""Issue 19 point 6: under SecAgg+ every site signs what it sends, and the server checks it.

The real handler (`register_secagg` with ``identify``) and the real round driver
(`SecAggSession.exchange` with ``signers``) over the in-process grid: each site signs the digest
of the exact masked uint32 vector it sends and of its unmask reply; a reply whose signature
is missing, altered, made with another key or not in lower-case hex excludes the site as
a dropout would (its masks are then removed through its key shares), with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity

from fedsilo.client.secagg_handler import SIGNER_KEY
from fedsilo.lineage import SiteLedger, sign_contribution, update_digest, verify_contribution
from fedsilo.lineage.signing import unmask_digest, verify_unmask
from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.privacy.secagg.records import ATTEST_KEY, MASKED_KEY, RECORD_KEY, ids_from_bytes
from fedsilo.server.secagg_round import SecAggOutcome, Signer
from fedsilo.server.verify_replies import round_audit

from .apps import (
    make_client_app,
    signers,
    site_fingerprint,
    site_update,
    train_content,
    write_site_key,
)
from .fake_grid import FakeGrid
from .helpers import run_secagg_round

NODES = [9001 + 17 * i for i in range(6)]
CFG = SecAggConfig(clip_range=0.5, bits=20, max_weight=100.0)
RUN = "signed-run"
MASKED, UNMASK = "train.secagg_masked", "train.secagg_unmask"


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Messages built outside a running app need the task identity set.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    yield


def _round(grid: FakeGrid, rnd: int = 1) -> SecAggOutcome:
    return run_secagg_round(grid, NODES, train_content=train_content(rnd), config=CFG,  # type: ignore[arg-type]
                            run_id=RUN, server_round=rnd, timeout=5.0, signers=signers(NODES))


def _assert_sum(out: SecAggOutcome, pids: list[int]) -> None:
    ups = [site_update(p) for p in pids]
    total = sum(w * x.astype(np.float64) for x, w in ups)
    assert out.sum_delta is not None
    assert np.max(np.abs(out.sum_delta - total)) < out.lineage["quantisation"]["bound"] + 1e-5
    assert abs(out.total_weight - sum(w for _, w in ups)) < 1e-3


def _replies(grid: FakeGrid, mtype: str) -> dict[int, Message]:
    return {int(m.metadata.src_node_id): m for m in grid.received
            if m.metadata.message_type == mtype and not m.has_error()}


def test_every_site_signs_its_masked_vector_and_unmask_reply(tmp_path: Path) -> None:
    grid = FakeGrid(make_client_app(sign=True, ledger_dir=tmp_path), NODES)
    out = _round(grid)
    assert out.ok and out.participants == NODES
    _assert_sum(out, list(range(len(NODES))))
    assert sorted(out.attestations) == NODES
    masked, unmask = _replies(grid, MASKED), _replies(grid, UNMASK)
    for pid, node in enumerate(NODES):
        att = out.attestations[node]
        # the digest of exactly the uint32 vector the server received from the site
        vec = masked[node].content[MASKED_KEY]["masked"].numpy()
        assert vec.dtype == np.uint32 and att["update_digest"] == update_digest(vec)
        assert att["data_fingerprint"] == site_fingerprint(pid)
        assert verify_contribution(signers(NODES)[node].public_key, att["signature"], RUN, 1,
                                   att["update_digest"], att["data_fingerprint"])
        rec = unmask[node].content[RECORD_KEY]
        shares = unmask_digest(ids_from_bytes(rec["b_owners"]), list(rec["b_shares"]),
                               ids_from_bytes(rec["sk_owners"]), list(rec["sk_shares"]))
        assert att["unmask_digest"] == shares
        assert verify_unmask(signers(NODES)[node].public_key, att["unmask_signature"], RUN, 1,
                             shares)
        # the site's own ledger keeps what it signed, with its real example count
        sent, unmasked = SiteLedger(tmp_path / f"{pid}.jsonl").entries()
        assert (sent["status"], sent["update_digest"], sent["signature"], sent["num_examples"],
                sent["secagg"]) == ("sent", att["update_digest"], att["signature"],
                                    int(site_update(pid)[1]), "masked_input")
        assert (unmasked["status"], unmasked["unmask_digest"], unmasked["signature"]) == (
            "unmasked", shares, att["unmask_signature"])
    audit = round_audit(out, {n: f"site-{i}" for i, n in enumerate(NODES)})
    assert audit.accepted == [f"site-{i}" for i in range(len(NODES))]
    assert (audit.rejected, audit.dropped) == ({}, [])
    assert [c["num_examples"] for c in audit.contributions] == [None] * len(NODES)
    assert set(audit.secagg["site_fates"].values()) == {"in_sum"}


def test_the_unmask_stage_reloads_only_the_sites_key(tmp_path: Path) -> None:
    """A site whose key came from a file is not built again to sign its unmask reply (on
    Flower's deployment runtime that is a fresh process building its trainer and data):
    its key and ledger files are named in its state at the masked stage and reloaded."""
    for pid in range(len(NODES)):
        write_site_key(tmp_path / "keys" / f"{pid}.pem", pid)
    identified: list[str] = []
    grid = FakeGrid(make_client_app(sign=True, ledger_dir=tmp_path, key_dir=tmp_path / "keys",
                                    identified=identified), NODES)
    for rnd in (1, 2):
        out = _round(grid, rnd)
        assert out.ok and sorted(out.attestations) == NODES
        assert all(verify_unmask(signers(NODES)[n].public_key, a["unmask_signature"], RUN, rnd,
                                 a["unmask_digest"]) for n, a in out.attestations.items())
    assert identified == [MASKED] * (2 * len(NODES))
    for pid in range(len(NODES)):
        assert [e["status"] for e in SiteLedger(tmp_path / f"{pid}.jsonl").entries()] == [
            "sent", "unmasked"] * 2
        assert SIGNER_KEY not in grid.contexts[NODES[pid]].state  # taken out at unmask


def _set_attest(field: str, value: Callable[[ConfigRecord], object]) -> Callable[[ConfigRecord], None]:
    def edit(rec: ConfigRecord) -> None:
        rec[field] = value(rec)  # type: ignore[assignment]

    return edit


def _flip(sig: object) -> str:
    s = str(sig)
    return s[:-1] + ("0" if s[-1] != "0" else "1")


def _other_key(rec: ConfigRecord) -> str:
    return sign_contribution(Ed25519PrivateKey.generate(), RUN, 1, str(rec["digest"]),
                             str(rec["data_fingerprint"]))


MASKED_TAMPERS: dict[str, tuple[Callable[[ConfigRecord], None] | None, str]] = {
    "altered": (_set_attest("signature", lambda r: _flip(r["signature"])),
                "site signature does not verify"),
    "upper-case hex": (_set_attest("signature", lambda r: str(r["signature"]).upper()),
                       "site signature does not verify"),
    "another key": (_set_attest("signature", _other_key), "site signature does not verify"),
    "digest of another vector": (_set_attest("digest", lambda r: _flip(r["digest"])),
                                 "masked input digest does not match the masked vector received"),
    "other data": (_set_attest("data_fingerprint", lambda r: site_fingerprint(40)),
                   "data fingerprint differs from the one announced at the handshake"),
    "unsigned": (None, "masked input is not signed (no site signature record)"),
}


@pytest.mark.parametrize("tamper", list(MASKED_TAMPERS))
def test_a_bad_masked_input_signature_excludes_the_site_as_a_dropout(tamper: str) -> None:
    edit, reason = MASKED_TAMPERS[tamper]
    bad = NODES[2]

    def mangle(rep: Message) -> Message:
        if rep.metadata.message_type == MASKED and int(rep.metadata.src_node_id) == bad:
            if edit is None:
                del rep.content[ATTEST_KEY]
            else:
                edit(rep.content[ATTEST_KEY])  # type: ignore[arg-type]
        return rep

    out = _round(FakeGrid(make_client_app(sign=True), NODES, mangle))
    assert out.ok, out.reason
    assert out.dropped["masked"] == [bad] and out.recovered == [bad]
    assert out.lineage["excluded"] == {str(bad): f"masked: {reason}"}
    assert bad not in out.participants and bad not in out.attestations
    _assert_sum(out, [0, 1, 3, 4, 5])
    audit = round_audit(out, {n: f"site-{i}" for i, n in enumerate(NODES)})
    assert audit.rejected == {"site-2": f"masked: {reason}"} and audit.dropped == []
    assert "site-2" not in audit.accepted and len(audit.accepted) == 5
    assert audit.secagg["site_fates"]["site-2"] == "recovered"


def test_a_bad_unmask_signature_excludes_only_that_reply() -> None:
    bad = NODES[4]

    def mangle(rep: Message) -> Message:
        if rep.metadata.message_type == UNMASK and int(rep.metadata.src_node_id) == bad:
            rec = rep.content[ATTEST_KEY]
            rec["signature"] = _flip(rec["signature"])  # type: ignore[index]
        return rep

    out = _round(FakeGrid(make_client_app(sign=True), NODES, mangle))
    assert out.ok, out.reason
    # its masked input is in the sum (signed and verified); its shares are not used
    assert out.participants == NODES and out.dropped["unmask"] == [bad]
    assert out.lineage["excluded"] == {
        str(bad): "unmask: site signature of the unmask reply does not verify"}
    _assert_sum(out, list(range(len(NODES))))
    assert "unmask_signature" not in out.attestations[bad]
    assert all("unmask_signature" in out.attestations[n] for n in NODES if n != bad)


def test_sites_without_keys_are_not_checked() -> None:
    """A site the handshake knows without a key (public key "") sends unsigned replies."""
    grid = FakeGrid(make_client_app(), NODES)
    out = run_secagg_round(grid, NODES, train_content=train_content(1), config=CFG,  # type: ignore[arg-type]
                           run_id=RUN, server_round=1, timeout=5.0,
                           signers=dict.fromkeys(NODES, Signer("", "")))
    assert out.ok and out.participants == NODES and out.attestations == {}

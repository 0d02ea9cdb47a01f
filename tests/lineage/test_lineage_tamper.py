"""Point 7: mutate a finished run in every way an attacker or a disk fault could.

Every mutation must make ``verify`` fail with a message naming the record
(``record <seq> (<type>): ...``), with ``--all-signatures`` and in default mode (every
digest and link, the head record's server signature and each site chain's last
attestation). In default mode a few mutations name a later record (the one whose link or
head signature exposes them, :data:`DEFAULT_SEQ`), and those that only replace a signature
of content left intact in the middle of the chain do not apply (:data:`DEFAULT_NOT_APPLICABLE`:
that content is still covered by the head's signature through the links; see
docs/lineage.md, "Trust argument"). The last test prints and counts the mutation classes.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsilo.lineage import (
    ClosingRecord,
    GenesisRecord,
    ResumeRecord,
    RoundRecord,
    SiteContribution,
    SiteIdentity,
    SiteJoinRecord,
    canonical_json,
    load_or_create_key,
    public_key_hex,
    read_chain,
    reconcile,
    verify_run,
)
from fedsilo.lineage.envelope import seal
from fedsilo.lineage.signing import (
    GENESIS_ATTESTATION,
    attestation_digest,
    contribution_message,
    sign_unmask,
)
from fedsilo.lineage.synthetic import SyntheticRun

# Layout of the conftest ``pristine_run`` chain (checked by test_layout_is_as_assumed).
LAYOUT = ["genesis", "round", "site_join", "round", "round", "resume", "round", "closing"]
FIRST = {t: LAYOUT.index(t) for t in LAYOUT}
CLASSES = [
    "field-edit",
    "byte-flip",
    "column-flip",
    "delete",
    "duplicate",
    "reorder",
    "truncate",
    "server-signature",
    "site-signature",
    "secagg",
    "key-swap",
    "model",
    "site-chain",
]
BODY_CLASSES = {
    "genesis": GenesisRecord,
    "site_join": SiteJoinRecord,
    "round": RoundRecord,
    "resume": ResumeRecord,
    "closing": ClosingRecord,
}
NESTED = {  # record type -> (path to a nested object, its dataclass)
    "genesis": (("sites", 0), SiteIdentity),
    "site_join": (("site",), SiteIdentity),
    "round": (("contributions", 0), SiteContribution),
}


# --- helpers -------------------------------------------------------------------------------
def db_of(run: SyntheticRun) -> Path:
    return run.run_dir / "lineage.sqlite"


def load_rows(db: Path) -> list[list[Any]]:
    with sqlite3.connect(db) as conn:
        return [
            list(r)
            for r in conn.execute(
                "SELECT seq, type, digest, signature, signed FROM records ORDER BY seq"
            )
        ]


def store_rows(db: Path, rows: list[list[Any]]) -> None:
    """Rewrite the table the way an attacker would: rows renumbered 0..n-1."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM records")
        conn.executemany(
            "INSERT INTO records (seq, type, digest, signature, signed) VALUES (?,?,?,?,?)",
            [(i, *row[1:]) for i, row in enumerate(rows)],
        )


def reseal(
    run: SyntheticRun, key: Ed25519PrivateKey, edit: Callable[[list[dict]], None], start: int = 0
) -> None:
    """Edit envelopes then re-digest and re-sign from ``start`` on (a key-holding attacker)."""
    envs = read_chain(db_of(run))
    edit(envs)
    rows = load_rows(db_of(run))
    prev = envs[start - 1]["digest"] if start else None
    for i in range(start, len(envs)):
        e = envs[i]
        data, digest, sig = seal(key, i, e["type"], prev, e["body"])
        e["digest"] = digest
        rows[i] = [i, e["type"], digest, sig, data.decode()]
        prev = digest
    store_rows(db_of(run), rows)


def server_key(run: SyntheticRun) -> Ed25519PrivateKey:
    return load_or_create_key(run.run_dir / "keys" / "server.pem")


def get_path(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def set_path(obj: Any, path: tuple, value: Any) -> None:
    get_path(obj, path[:-1])[path[-1]] = value


def changed(value: Any) -> Any:
    """A different value of (mostly) the same form, so only the digest can catch it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if value is None:
        return "sha256:" + "00" * 32
    if isinstance(value, str):
        if value and value[-1] in "0123456789abcdef":
            return value[:-1] + ("1" if value[-1] == "0" else "0")
        return value + "x"
    if isinstance(value, list):
        return value[:-1] if value else ["site-000"]
    if isinstance(value, dict):
        return {**value, "tampered": 1}
    raise AssertionError(value)


@dataclass(frozen=True)
class Mutation:
    cls: str
    name: str
    apply: Callable[[SyntheticRun], dict[str, Any] | None]  # returns verify kwargs
    seq: int  # the record the failure must name

    def __str__(self) -> str:
        return f"{self.cls}:{self.name}"


MUTATIONS: list[Mutation] = []


def mutation(cls: str, name: str, seq: int) -> Callable:
    assert cls in CLASSES

    def register(fn: Callable[[SyntheticRun], dict[str, Any] | None]) -> Callable:
        MUTATIONS.append(Mutation(cls, name, fn, seq))
        return fn

    return register


def field_paths(record_type: str) -> list[tuple]:
    """Every field of a record type: envelope fields, body fields, one nested object's fields."""
    paths: list[tuple] = [(k,) for k in ("schema", "seq", "type", "prev")]
    # a round's optional ``evaluations`` are absent from the pristine chain (they are
    # tampered with in tests/integration/test_site_evaluation.py, on chains that hold them)
    paths += [("body", f.name) for f in fields(BODY_CLASSES[record_type])
              if (record_type, f.name) != ("round", "evaluations")]
    if record_type in NESTED:
        base, nested_cls = NESTED[record_type]
        paths += [("body", *base, f.name) for f in fields(nested_cls)]
    return paths


# --- field edits and byte flips: every field of every record type ---------------------------
def _edit_field(seq: int, path: tuple) -> Callable[[SyntheticRun], None]:
    def apply(run: SyntheticRun) -> None:
        rows = load_rows(db_of(run))
        env = read_chain(db_of(run))[seq]
        signed = {k: env[k] for k in ("schema", "seq", "type", "prev", "body")}
        set_path(signed, path, changed(get_path(signed, path)))
        rows[seq][4] = canonical_json(signed).decode()
        store_rows(db_of(run), rows)

    return apply


def _flip_field_byte(seq: int, path: tuple) -> Callable[[SyntheticRun], None]:
    """Disk fault: flip one bit in the middle of the field's bytes inside the SQLite file."""

    def apply(run: SyntheticRun) -> None:
        signed = load_rows(db_of(run))[seq][4].encode()
        env = read_chain(db_of(run))[seq]
        value = get_path(env, path)
        start = 0
        for key in path[:-1]:  # walk to the parent object inside the signed text
            if isinstance(key, str):
                start = signed.index(b'"' + key.encode() + b'":', start)
        fragment = b'"' + str(path[-1]).encode() + b'":' + canonical_json(value)
        offset = (
            signed.index(fragment, start) + len(fragment) - max(1, len(canonical_json(value)) // 2)
        )
        raw = bytearray(db_of(run).read_bytes())
        assert raw.count(signed) == 1, "record text must be stored once, contiguously"
        raw[raw.index(signed) + offset] ^= 0x01
        db_of(run).write_bytes(bytes(raw))

    return apply


def _flip_column(seq: int, column: str) -> Callable[[SyntheticRun], None]:
    def apply(run: SyntheticRun) -> None:
        _, _, digest, signature, _ = load_rows(db_of(run))[seq]
        raw = bytearray(db_of(run).read_bytes())
        at = raw.index((digest + signature).encode())  # the two adjacent columns of the row
        raw[at + (10 if column == "digest" else len(digest) + 10)] ^= 0x01
        db_of(run).write_bytes(bytes(raw))

    return apply


for _type, _seq in FIRST.items():
    for _path in field_paths(_type):
        _name = f"{_type}.{'.'.join(map(str, _path))}"
        MUTATIONS.append(Mutation("field-edit", _name, _edit_field(_seq, _path), _seq))
        MUTATIONS.append(Mutation("byte-flip", _name, _flip_field_byte(_seq, _path), _seq))
    for _column in ("digest", "signature"):
        MUTATIONS.append(
            Mutation("column-flip", f"{_type}.{_column}", _flip_column(_seq, _column), _seq)
        )


# --- structural: delete, duplicate, reorder, truncate --------------------------------------
def _rows_edit(edit: Callable[[list], list]) -> Callable[[SyntheticRun], None]:
    def apply(run: SyntheticRun) -> None:
        store_rows(db_of(run), edit(load_rows(db_of(run))))

    return apply


for _type, _seq in FIRST.items():
    if _type != "closing":
        MUTATIONS.append(
            Mutation(
                "delete", _type, _rows_edit(lambda rows, s=_seq: rows[:s] + rows[s + 1 :]), _seq
            )
        )
    MUTATIONS.append(
        Mutation(
            "duplicate",
            _type,
            _rows_edit(lambda rows, s=_seq: rows[: s + 1] + [list(rows[s])] + rows[s + 1 :]),
            _seq + 1,
        )
    )
MUTATIONS += [
    Mutation("reorder", "swap-rounds", _rows_edit(lambda r: r[:3] + [r[4], r[3]] + r[5:]), 3),
    Mutation("reorder", "swap-round-and-join", _rows_edit(lambda r: [r[0], r[2], r[1]] + r[3:]), 1),
    Mutation("reorder", "genesis-last", _rows_edit(lambda r: r[1:] + r[:1]), 0),
    Mutation("reorder", "reverse", _rows_edit(lambda r: r[::-1]), 0),
    Mutation("truncate", "drop-closing", _rows_edit(lambda r: r[:-1]), 6),
    Mutation("truncate", "drop-last-3", _rows_edit(lambda r: r[:-3]), 4),
    Mutation("truncate", "genesis-only", _rows_edit(lambda r: r[:1]), 0),
    Mutation("truncate", "empty", _rows_edit(lambda r: []), 0),
]


# --- signatures ----------------------------------------------------------------------------
for _type, _seq in FIRST.items():

    def _borrow(run: SyntheticRun, s: int = _seq) -> None:
        rows = load_rows(db_of(run))
        rows[s][3] = rows[(s + 1) % len(rows)][3]  # a valid signature of another record
        store_rows(db_of(run), rows)

    def _other_key(run: SyntheticRun, s: int = _seq) -> None:
        rows = load_rows(db_of(run))
        rows[s][3] = Ed25519PrivateKey.generate().sign(rows[s][2].encode()).hex()
        store_rows(db_of(run), rows)

    MUTATIONS.append(Mutation("server-signature", f"{_type}.borrowed", _borrow, _seq))
    MUTATIONS.append(Mutation("server-signature", f"{_type}.other-key", _other_key, _seq))


@mutation("server-signature", "round.truncated-hex", 3)
def _truncated_signature(run: SyntheticRun) -> None:
    rows = load_rows(db_of(run))
    rows[3][3] = rows[3][3][:-2]
    store_rows(db_of(run), rows)


@mutation("server-signature", "round.upper-cased-hex", 3)
def _upper_cased_signature(run: SyntheticRun) -> None:
    """The same signature bytes in another encoding: the stored chain changed, so it fails."""
    rows = load_rows(db_of(run))
    rows[3][3] = rows[3][3].upper()
    store_rows(db_of(run), rows)


@mutation("server-signature", "genesis.upper-cased-hex", 0)
def _upper_cased_genesis_signature(run: SyntheticRun) -> None:
    rows = load_rows(db_of(run))
    rows[0][3] = rows[0][3].upper()
    store_rows(db_of(run), rows)


def _contribution_edit(seq: int, edit: Callable[[list[dict]], None]) -> Callable:
    """A key-holding server alters a contribution and re-signs the chain from there."""

    def apply(run: SyntheticRun) -> None:
        def change(envs: list[dict]) -> None:
            edit(envs[seq]["body"]["contributions"])

        reseal(run, server_key(run), change, start=seq)

    return apply


def _swap_sigs(cs: list[dict]) -> None:
    cs[0]["signature"], cs[1]["signature"] = cs[1]["signature"], cs[0]["signature"]


MUTATIONS += [
    Mutation("site-signature", "swapped-between-sites", _contribution_edit(3, _swap_sigs), 3),
    Mutation(
        "site-signature",
        "update-digest-replaced",
        _contribution_edit(
            4, lambda cs: cs[-1].update(update_digest=changed(cs[-1]["update_digest"]))
        ),
        4,
    ),
    Mutation(
        "site-signature",
        "data-fingerprint-replaced",
        _contribution_edit(
            6, lambda cs: cs[0].update(data_fingerprint=changed(cs[0]["data_fingerprint"]))
        ),
        6,
    ),
    Mutation(
        "site-signature",
        "upper-cased-hex",
        _contribution_edit(3, lambda cs: cs[1].update(signature=cs[1]["signature"].upper())),
        3,
    ),
    Mutation(
        "site-signature",
        "forged-random",
        _contribution_edit(1, lambda cs: cs[1].update(signature="ab" * 64)),
        1,
    ),
]


# --- SecAgg+ contribution forms (a key-holding server re-signs the chain) ------------------
def _secagg_round(seq: int, edit: Callable[[dict, dict], None]) -> Callable:
    """Make round ``seq`` a SecAgg+ round whose first contribution carries ``detail.secagg``
    with a valid unmask signature of its site, then apply ``edit(round body, secagg)``."""

    def apply(run: SyntheticRun) -> None:
        def change(envs: list[dict]) -> None:
            body = envs[seq]["body"]
            body["secagg"] = {"protocol": "secagg+"}
            c = body["contributions"][0]
            key = load_or_create_key(run.run_dir / "sites" / c["site_id"] / "key.pem")
            digest = "sha256:" + "ab" * 32
            secagg = {"fate": "in_sum", "unmask_digest": digest,
                      "unmask_signature": sign_unmask(key, run.run_id, body["round"], digest)}
            c["detail"]["secagg"] = secagg
            edit(body, secagg)

        reseal(run, server_key(run), change, start=seq)

    return apply


def _nothing(body: dict, secagg: dict) -> None:
    pass


def _null_plain_count(body: dict, secagg: dict) -> None:
    body["secagg"] = None
    del body["contributions"][0]["detail"]["secagg"]
    body["contributions"][1]["num_examples"] = None


MUTATIONS += [
    Mutation("secagg", "unmask-signature-forged", _secagg_round(
        3, lambda b, s: s.update(unmask_signature="ab" * 64)), 3),
    Mutation("secagg", "unmask-digest-replaced", _secagg_round(
        3, lambda b, s: s.update(unmask_digest="sha256:" + "cd" * 32)), 3),
    Mutation("secagg", "unmask-signature-upper-cased", _secagg_round(
        4, lambda b, s: s.update(unmask_signature=s["unmask_signature"].upper())), 4),
    Mutation("secagg", "unmask-signature-other-key", _secagg_round(
        4, lambda b, s: s.update(unmask_signature=sign_unmask(
            Ed25519PrivateKey.generate(), "synthetic-0", b["round"], s["unmask_digest"]))), 4),
    Mutation("secagg", "fate-invented", _secagg_round(
        1, lambda b, s: s.update(fate="trusted")), 1),
    Mutation("secagg", "secure-form-in-plain-round", _secagg_round(
        6, lambda b, s: b.update(secagg=None)), 6),
    Mutation("secagg", "count-nulled-in-plain-round", _secagg_round(6, _null_plain_count), 6),
]


def test_secagg_form_mutation_base_verifies(run: SyntheticRun) -> None:
    """The SecAgg+ mutations start from a chain that verifies (so each one is what fails)."""
    _secagg_round(3, _nothing)(run)
    report = verify_run(run.run_dir, all_signatures=True)
    assert report.ok, report.summary
    assert report.site_signatures == 5 + 4 + 5 + 4 + 5 + 1  # declarations; the unmask signature counts
    report = verify_run(run.run_dir)  # default: declarations, 5 chain heads, the unmask one
    assert report.ok and report.site_signatures == 5 + 5 + 1, report.summary


@mutation("site-signature", "declared-count-inflated", 0)
def _declared_count_inflated(run: SyntheticRun) -> None:
    """A key-holding server raises a site's declared example count (the bound of its
    weight) and re-signs the chain: the site's own declaration signature no longer holds."""

    def inflate(envs: list[dict]) -> None:
        envs[0]["body"]["sites"][0]["num_examples"] = 10**12

    reseal(run, server_key(run), inflate)


# --- key swaps ---------------------------------------------------------------------------
@mutation("key-swap", "genesis-server-key-replaced", 0)
def _server_key_replaced(run: SyntheticRun) -> None:
    _edit_field(0, ("body", "server_public_key"))(run)


@mutation("key-swap", "whole-chain-resigned-by-attacker (pinned key)", 0)
def _resigned_by_attacker(run: SyntheticRun) -> dict[str, Any]:
    pinned = public_key_hex(server_key(run))
    attacker = Ed25519PrivateKey.generate()

    def swap(envs: list[dict]) -> None:
        envs[0]["body"]["server_public_key"] = public_key_hex(attacker)

    reseal(run, attacker, swap)
    assert verify_run(run.run_dir).ok  # self-consistent: only a pinned key can catch it
    return {"expected_server_key": pinned}


@mutation("key-swap", "site-key-replaced-by-server", 0)
def _site_key_replaced(run: SyntheticRun) -> None:
    """Caught at genesis: the site's declaration no longer verifies under the new key."""

    def swap(envs: list[dict]) -> None:
        envs[0]["body"]["sites"][0]["public_key"] = public_key_hex(Ed25519PrivateKey.generate())

    reseal(run, server_key(run), swap)


@mutation("key-swap", "site-key-replaced-declaration-dropped", 1)
def _site_key_replaced_declaration_dropped(run: SyntheticRun) -> None:
    """Without the declaration, the site's first contribution exposes the swap."""

    def swap(envs: list[dict]) -> None:
        site = envs[0]["body"]["sites"][0]
        site["public_key"] = public_key_hex(Ed25519PrivateKey.generate())
        del site["declaration"]

    reseal(run, server_key(run), swap)


@mutation("key-swap", "middle-record-signed-by-other-key", 4)
def _middle_other_key(run: SyntheticRun) -> None:
    rows = load_rows(db_of(run))
    envs = read_chain(db_of(run))
    e = envs[4]
    _, digest, sig = seal(Ed25519PrivateKey.generate(), 4, e["type"], e["prev"], e["body"])
    rows[4][2:4] = [digest, sig]
    store_rows(db_of(run), rows)


# --- the saved model -------------------------------------------------------------------------
@mutation("model", "replaced", 7)
def _model_replaced(run: SyntheticRun) -> None:
    np.savez(run.run_dir / "model.npz", w=np.ones(8, np.float32), b=np.zeros(2, np.float32))


@mutation("model", "bit-flip", 7)
def _model_flipped(run: SyntheticRun) -> None:
    path = run.run_dir / "model.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))


@mutation("model", "deleted", 7)
def _model_deleted(run: SyntheticRun) -> None:
    (run.run_dir / "model.npz").unlink()


@mutation("model", "layer-renamed", 7)
def _model_renamed(run: SyntheticRun) -> None:
    with np.load(run.run_dir / "model.npz") as z:
        arrays = {("weights" if k == "w" else k): z[k] for k in z.files}
    np.savez(run.run_dir / "model.npz", **arrays)


# --- site attestation chains (a key-holding server re-signs the record chain) -------------
def _site_key(run: SyntheticRun, site: str) -> Ed25519PrivateKey:
    return load_or_create_key(run.run_dir / "sites" / site / "key.pem")


def _contribution(envs: list[dict], seq: int, site: str) -> dict:
    return next(c for c in envs[seq]["body"]["contributions"] if c["site_id"] == site)


def _digest_of(run: SyntheticRun, envs: list[dict], seq: int, c: dict) -> str:
    """The attestation digest of contribution ``c`` of record ``seq`` (the next one's prev)."""
    return attestation_digest(contribution_message(
        run.run_id, envs[seq]["body"]["round"], c["update_digest"], c["data_fingerprint"],
        c["prev"]))


def _drop_from_middle(envs: list[dict]) -> None:
    """site-000's round-2 attestation (record 3) removed from the chain."""
    body = envs[3]["body"]
    body["contributions"] = [c for c in body["contributions"] if c["site_id"] != "site-000"]
    for name in ("replied", "accepted", "sampled"):
        body[name] = [s for s in body[name] if s != "site-000"]


def _fork(run: SyntheticRun) -> Callable[[list[dict]], None]:
    """site-000 signs a second attestation after its round-1 one: its round-3 attestation
    (record 4) names the same prev as its round-2 one (record 3), validly signed."""

    def edit(envs: list[dict]) -> None:
        c = _contribution(envs, 4, "site-000")
        c["prev"] = _contribution(envs, 3, "site-000")["prev"]
        c["signature"] = sign_contribution(_site_key(run, "site-000"), run.run_id, 3,
                                           c["update_digest"], c["data_fingerprint"], c["prev"])

    return edit


def _prev_altered(envs: list[dict]) -> None:
    c = _contribution(envs, 3, "site-000")
    c["prev"] = changed(c["prev"])


def _forged_in_middle(envs: list[dict]) -> None:
    """A forged attestation for site-000 in round 2 (record 3): new update digest, the right
    prev, a signature by another key."""
    c = _contribution(envs, 3, "site-000")
    c["update_digest"] = changed(c["update_digest"])
    c["signature"] = sign_contribution(Ed25519PrivateKey.generate(), "synthetic-0", 2,
                                       c["update_digest"], c["data_fingerprint"], c["prev"])


def _chain_edit(edit: Callable[[list[dict]], None], start: int) -> Callable:
    def apply(run: SyntheticRun) -> None:
        reseal(run, server_key(run), edit, start=start)

    return apply


def _site_chain_edit(make: Callable[[SyntheticRun], Callable[[list[dict]], None]],
                     start: int) -> Callable:
    def apply(run: SyntheticRun) -> None:
        reseal(run, server_key(run), make(run), start=start)

    return apply


from fedsilo.lineage import sign_contribution  # noqa: E402  (used by the edits above)

SITE_CHAIN = [
    Mutation("site-chain", "attestation-dropped-from-middle", _chain_edit(_drop_from_middle, 3), 4),
    Mutation("site-chain", "chain-forked", _site_chain_edit(_fork, 4), 4),
    Mutation("site-chain", "prev-link-altered", _chain_edit(_prev_altered, 3), 3),
    Mutation("site-chain", "forged-attestation-in-middle", _chain_edit(_forged_in_middle, 3), 3),
]
MUTATIONS += SITE_CHAIN


def _broken(envs: list[dict], run: SyntheticRun, seq: int, head: str) -> str:
    prev = _contribution(envs, seq, "site-000")["prev"]
    return (f"record {seq} (round): site 'site-000' attestation chain broken at round "
            f"{envs[seq]['body']['round']}: prev {prev[:19]}… is not its previous attestation "
            f"{head[:19]}… (one dropped or altered, or the link altered)")


@pytest.mark.parametrize("mode", ["all-signatures", "default"])
@pytest.mark.parametrize("mut", SITE_CHAIN, ids=str)
def test_site_chain_exact_message(run: SyntheticRun, pristine_run: SyntheticRun,
                                  mut: Mutation, mode: str) -> None:
    """Each site-chain mutation fails with its exact one-line message, in both modes."""
    before = read_chain(db_of(pristine_run))
    mut.apply(run)
    after = read_chain(db_of(run))
    report = verify_run(run.run_dir, all_signatures=mode == "all-signatures")
    round1 = _digest_of(run, before, 1, _contribution(before, 1, "site-000"))
    if mut.name == "attestation-dropped-from-middle":
        # site-000's round-3 attestation names the dropped one: only round 1's precedes it
        expected = _broken(after, run, 4, round1)
    elif mut.name == "chain-forked":
        expected = ("record 4 (round): site 'site-000' attestation chain forked at round 3: "
                    f"its prev {round1[:19]}… is already followed by another attestation")
    elif mut.name == "prev-link-altered":
        expected = _broken(after, run, 3, round1)
    elif mode == "default":  # forged in the middle: the next attestation's link exposes it
        expected = _broken(after, run, 4,
                           _digest_of(run, after, 3, _contribution(after, 3, "site-000")))
    else:  # --all-signatures: its own signature
        expected = "record 3 (round): site signature of 'site-000' invalid"
    assert report.first_failure == expected
    assert report.summary == f"FAILED: {expected}"
    assert "\n" not in report.summary


# --- tests -----------------------------------------------------------------------------------
def test_layout_is_as_assumed(pristine_run: SyntheticRun) -> None:
    assert [e["type"] for e in read_chain(db_of(pristine_run))] == LAYOUT
    report = verify_run(pristine_run.run_dir, all_signatures=True)
    assert report.ok, report.summary
    assert report.site_signatures == 5 + 4 + 5 + 4 + 5 and report.closed  # site-001 refuses r3
    assert report.server_signatures == len(LAYOUT)
    report = verify_run(pristine_run.run_dir)
    assert report.ok, report.summary
    assert (report.site_signatures, report.server_signatures) == (5 + 5, 1)  # + chain heads


# Default mode checks the server's signature on the head record only and each site's last
# attestation; a mutation that replaces only a signature while the content it signs stays
# intact, in the middle of the chain, leaves every digest and link (and what they prove) as
# it was: it is --all-signatures' to catch.
DEFAULT_NOT_APPLICABLE = {
    *(f"column-flip:{t}.signature" for t in ("genesis", "round", "site_join", "resume")),
    *(f"server-signature:{t}.{how}" for t in ("genesis", "round", "site_join", "resume")
      for how in ("borrowed", "other-key")),
    "site-signature:swapped-between-sites",
    "site-signature:forged-random",
    "key-swap:middle-record-signed-by-other-key",
}
# where default mode finds a mutation that --all-signatures finds earlier: the record
# whose link (or chain-head signature) exposes it
DEFAULT_SEQ = {
    "site-signature:update-digest-replaced": 6,  # site-late's next attestation's prev
    "key-swap:site-key-replaced-declaration-dropped": 6,  # site-000's chain head
    "site-chain:forged-attestation-in-middle": 4,  # site-000's next attestation's prev
}


@pytest.mark.parametrize("mode", ["all-signatures", "default"])
@pytest.mark.parametrize("mut", MUTATIONS, ids=str)
def test_mutation_detected(run: SyntheticRun, mut: Mutation, mode: str) -> None:
    default = mode == "default"
    if default and str(mut) in DEFAULT_NOT_APPLICABLE:
        pytest.skip("a signature over intact content in mid-chain: --all-signatures only")
    kwargs = mut.apply(run) or {}
    report = verify_run(run.run_dir, all_signatures=not default, **kwargs)
    assert not report.ok, f"undetected: {mut}"
    if default and str(mut) in DEFAULT_SEQ:
        mut = Mutation(mut.cls, mut.name, mut.apply, DEFAULT_SEQ[str(mut)])
    label = LAYOUT[mut.seq] if mut.seq < len(LAYOUT) else "?"
    if mut.cls == "duplicate":
        label = LAYOUT[mut.seq - 1]  # the copy of the previous record
    if mut.cls == "delete":
        label = LAYOUT[mut.seq + 1]  # the record that moved into the gap
    if mut.cls == "reorder":
        label = ""
    if mut.name == "empty":
        label = "missing"
    assert report.first_failure is not None
    assert report.first_failure.startswith(f"record {mut.seq} ({label}"), report.first_failure
    assert report.failed_seq == mut.seq
    assert report.summary == f"FAILED: {report.first_failure}"


def test_forged_site_contributions_caught_by_reconcile(run: SyntheticRun) -> None:
    """A server that swaps a site's key and forges all its contributions passes ``verify``
    (it holds the server key); the site's own ledger is what exposes it."""
    site = "site-002"
    fake = Ed25519PrivateKey.generate()
    from fedsilo.lineage.signing import sign_declaration

    def forge(envs: list[dict]) -> None:
        prev = GENESIS_ATTESTATION  # the forger rebuilds the site's attestation chain
        envs[0]["body"]["sites"][2]["public_key"] = public_key_hex(fake)
        # the forger re-signs the site's declaration with the fake key too
        envs[0]["body"]["sites"][2]["declaration"] = sign_declaration(
            fake, run.run_id, site, envs[0]["body"]["sites"][2]["data_fingerprint"],
            envs[0]["body"]["sites"][2]["num_examples"])
        for e in envs:
            if e["type"] == "round":
                for c in e["body"]["contributions"]:
                    if c["site_id"] == site:
                        c["update_digest"] = changed(c["update_digest"])
                        c["prev"] = prev
                        c["signature"] = sign_contribution(
                            fake,
                            run.run_id,
                            e["body"]["round"],
                            c["update_digest"],
                            c["data_fingerprint"],
                            prev,
                        )
                        prev = attestation_digest(contribution_message(
                            run.run_id, e["body"]["round"], c["update_digest"],
                            c["data_fingerprint"], prev))

    reseal(run, server_key(run), forge)
    assert verify_run(run.run_dir).ok and verify_run(run.run_dir, all_signatures=True).ok
    mismatches = reconcile(run.run_dir, run.run_dir / "sites" / site / "ledger.jsonl")
    assert len(mismatches) == 8  # 4 rounds x (update_digest, signature)
    assert all("update_digest differs" in m or "signature differs" in m for m in mismatches)


def test_zz_mutation_classes_counted() -> None:
    counts = Counter(m.cls for m in MUTATIONS)
    print(f"\ntamper suite: {len(counts)} mutation classes, {len(MUTATIONS)} mutations")
    for cls in CLASSES:
        print(f"  {cls:<17} {counts[cls]:>4}")
    assert list(counts) == CLASSES
    assert len(counts) == 13
    assert len(MUTATIONS) == sum(counts.values()) == len({str(m) for m in MUTATIONS})

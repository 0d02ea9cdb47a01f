"""Verification of a run's chain: digests, links, server and site signatures, models.

Checks, in chain order, naming the first record that fails:

1. the store's rows parse as JSON envelopes with exactly the signed fields;
2. schema version is :data:`SCHEMA_VERSION`; ``seq`` runs 0, 1, 2, ... (no record missing,
   duplicated or reordered); record 0 is the only genesis record; ``prev`` is the previous
   record's digest (``null`` for record 0);
3. the digest recomputed over the signed bytes equals the stored digest, and the signed
   bytes are canonical JSON;
4. the server's Ed25519 signature over the digest, with the genesis ``server_public_key``
   (and, when given, that key equals the expected, pinned server key); signatures have one
   encoding, 128 lower-case hex characters: any other (upper case...) fails;
5. each body matches its record schema; site ids are unique; a site contributes only after
   it joined; ``accepted`` equals the sites whose contribution fate is ``accepted``;
6. each contribution's site signature over (run id, round, update digest, data
   fingerprint), with the site's key from the genesis or site-join record; under SecAgg+
   the update digest is the masked vector's, and ``detail.secagg`` may carry the site's
   signature over its unmask reply (:func:`fedsilo.lineage.signing.unmask_message`), checked
   and counted too;
   each per-site evaluation (optional ``evaluations``) is from a known site, once per
   round, of the round's ``model_out``, and its site signature
   (:func:`fedsilo.lineage.signing.evaluation_message`) is checked and counted too;
7. rounds increase; ``model_in`` of each round equals the model the previous round left
   (or the initial model, or the model after the round a resume record names); a skipped
   round keeps the model;
8. a closing record, if any, is last (except an ``interrupted`` one, which a ``resume``
   record may follow) and its ``final_model_digest`` is the current model;
   then ``RUN_DIR/model.npz`` must have that digest. It must exist when the run ended with
   ``completed``, ``no_progress``, ``budget_exhausted`` (or the legacy ``rounds_done``);
   after ``error`` or ``interrupted`` a missing
   model file is noted, not failed. (``rounds_completed`` is informational: it is covered by
   the digest and signature but not cross-checked.)

A chain without a closing record is a valid prefix (an open or crashed run), unless
``RUN_DIR/model.npz`` exists: a saved final model with no closing record means records were
removed from the end, so it fails (writers save the model atomically just before they
append the closing record: a crash in between also fails here until ``--resume`` closes the
chain). Removing the closing record *and* the model leaves a valid-looking prefix; the
sites' ledgers (``reconcile``) are what catches that.

Signatures (the dominant cost: one Ed25519 check per contribution) are checked on a thread
pool while the main thread parses; ``cryptography`` releases the GIL while verifying.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import SCHEMA_VERSION, canonical_json_parsed, prefixed_digest
from .digests import npz_digest
from .envelope import SIGNED_KEYS
from .errors import LineageError
from .keys import key_fingerprint, load_public_key
from .records import RECORD_TYPES, validate_body
from .runs import locate_run
from .signing import (
    CONTRIBUTION_SCHEMA,
    evaluation_message,
    unmask_message,
    verify_declaration,
)
from .store import parse_json, read_rows

_SIGNED_KEY_SET = frozenset(SIGNED_KEYS)
_SIG_HEX = re.compile(r"[0-9a-f]{128}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SECAGG_FATES = frozenset({"in_sum", "recovered", "dropped", "aborted"})
_CHUNK = 2048

Row = tuple[Any, Any, Any, Any, Any]
# (seq, label, what, public key, signature bytes, message)
_Job = tuple[int, str, str, Ed25519PublicKey, bytes, bytes]


@dataclass
class VerifyReport:
    """Outcome of a verification.

    Attributes:
        ok: ``True`` when every check passed.
        records: number of records in the chain.
        first_failure: ``"record <seq> (<type>): <what failed>"`` or ``None``.
        summary: one line for humans (the CLI prints it).
        failed_seq: seq of the first failing record (``None`` if ok or not record-specific).
        closed: whether the chain ends with a closing record.
        rounds: number of round records.
        site_signatures: number of site signatures checked.
        server_key: fingerprint of the genesis server key (``None`` if unreadable).
        final_model_digest: the model the chain ends with (``None`` if unknown).
    """

    ok: bool
    records: int
    first_failure: str | None
    summary: str
    failed_seq: int | None = None
    closed: bool = False
    rounds: int = 0
    site_signatures: int = 0
    server_key: str | None = None
    final_model_digest: str | None = None
    notes: list[str] = field(default_factory=list)


class _Failure(Exception):
    def __init__(self, seq: int, label: str, what: str) -> None:
        super().__init__(f"record {seq} ({label}): {what}")
        self.seq = seq


def verify_run(
    run_dir: Path,
    *,
    check_site_signatures: bool = True,
    expected_server_key: str | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify a run directory's chain and final model (see the module docstring).

    Args:
        run_dir: the run directory (holding ``lineage.sqlite`` and ``model.npz``), or the
            ``lineage.sqlite`` file itself.
        check_site_signatures: check every contribution's site signature (default). Turning
            it off is reported in the summary and leaves contributions unauthenticated.
        expected_server_key: the server public key (64 hex) the auditor trusts; when given,
            a chain signed by any other key fails at record 0.
        workers: signature-checking threads (default: ``os.cpu_count()``).

    Returns:
        A :class:`VerifyReport`; ``ok`` is ``False`` on any verification failure.

    Raises:
        LineageError: for bad input (missing directory or store, not SQLite, corrupted
            file, unknown store schema).
    """
    run = locate_run(run_dir)
    rows = read_rows(run.db_path)
    return verify_rows(
        rows,
        model_path=run.model_path,
        check_site_signatures=check_site_signatures,
        expected_server_key=expected_server_key,
        workers=workers,
    )


def verify_envelopes(
    envelopes: Sequence[dict[str, Any]], *, check_site_signatures: bool = True
) -> VerifyReport:
    """Verify in-memory envelopes (as :func:`read_chain` returns them); no model file check."""
    rows: list[Row] = []
    for i, env in enumerate(envelopes):
        signed = {k: env.get(k) for k in SIGNED_KEYS}
        rows.append(
            (
                i,
                env.get("type"),
                env.get("digest"),
                env.get("signature"),
                canonical_json_parsed(signed).decode("utf-8"),
            )
        )
    return verify_rows(rows, model_path=None, check_site_signatures=check_site_signatures)


def verify_rows(
    rows: Sequence[Row],
    *,
    model_path: Path | None,
    check_site_signatures: bool = True,
    expected_server_key: str | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify raw store rows ``(seq, type, digest, signature, signed)``.

    Args:
        rows: rows in storage order, as :func:`fedsilo.lineage.store.read_rows` returns.
        model_path: the saved final model to check against the closing record; ``None``
            skips the model file check (used when continuing a chain).
        check_site_signatures, expected_server_key, workers: see :func:`verify_run`.
    """
    checker = _Checker(len(rows), check_site_signatures, expected_server_key, workers)
    try:
        return checker.run(rows, model_path)
    finally:
        checker.shutdown()


class _Checker:
    """One verification pass (sequential structure checks + pooled signature checks)."""

    def __init__(
        self, n: int, check_sites: bool, expected_server_key: str | None, workers: int | None
    ) -> None:
        self.n = n
        self.check_sites = check_sites
        self.expected_server_key = expected_server_key
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
        self.futures: list[Future[tuple[int, str] | None]] = []
        self.jobs: list[_Job] = []
        self.server: Ed25519PublicKey | None = None
        self.server_hex: str | None = None
        self.run_id = ""
        self.sites: dict[str, tuple[Ed25519PublicKey, int]] = {}
        self.initial: str | None = None
        self.current: str | None = None
        self.after_round: dict[int, str] = {}  # round -> model after it (effective history)
        self.last_round = -1
        self.rounds = 0
        self.site_signatures = 0
        self.closing: dict[str, Any] | None = None
        self.closed_at = -1
        self._run_id_json = ""
        self.last_label = "?"
        self._handlers = {
            "site_join": self._site_join,
            "round": self._round,
            "resume": self._resume,
            "closing": self._closing,
        }

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- signature jobs -------------------------------------------------------------
    def _queue(self, job: _Job) -> None:
        self.jobs.append(job)
        if len(self.jobs) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.jobs:
            self.futures.append(self.pool.submit(_check_signatures, self.jobs))
            self.jobs = []

    def _first_signature_failure(self) -> _Failure | None:
        self._flush()
        failures = [f.result() for f in self.futures]
        found = [f for f in failures if f is not None]
        if not found:
            return None
        seq, message = min(found)
        return _Failure(seq, message.split("\x00", 1)[0], message.split("\x00", 1)[1])

    # -- main pass --------------------------------------------------------------------
    def run(self, rows: Sequence[Row], model_path: Path | None) -> VerifyReport:
        failure: _Failure | None = None
        prev: str | None = None
        for i, row in enumerate(rows):
            try:
                prev = self._record(i, row, prev)
            except _Failure as exc:
                failure = exc
                break
        signature_failure = self._first_signature_failure()
        if signature_failure is not None and (
            failure is None or signature_failure.seq < failure.seq
        ):
            failure = signature_failure
        if failure is None and not rows:
            failure = _Failure(0, "missing", "the chain is empty (expected a genesis record)")
        if failure is not None:
            return self._report(False, str(failure), failure.seq)
        notes: list[str] = []
        if self.closing is None and model_path is not None and model_path.exists():
            return self._report(
                False,
                f"record {self.n - 1} ({self.last_label}): the chain ends without a closing "
                f"record but {model_path.name} exists (records removed from the end?)",
                self.n - 1,
            )
        if self.closing is not None and model_path is not None:
            model_failure = self._check_model(model_path)
            if model_failure is not None:
                return self._report(False, model_failure, self.closed_at)
            if self.closing["final_model_digest"] is not None:
                notes.append(
                    "final model matches model.npz"
                    if model_path.exists()
                    else f"no model.npz (run ended: {self.closing['reason']})"
                )
        elif self.closing is None:
            notes.append("open chain (no closing record): a valid prefix; model.npz not checked")
        return self._report(True, None, None, notes)

    def _check_model(self, model_path: Path) -> str | None:
        assert self.closing is not None
        expected = self.closing["final_model_digest"]
        label = f"record {self.closed_at} (closing)"
        if expected is None:
            return None
        if not model_path.exists():
            if self.closing["reason"] in ("error", "interrupted"):
                return None
            return f"{label}: final model {expected} but {model_path.name} is missing"
        try:
            actual = npz_digest(model_path)
        except LineageError as exc:
            return f"{label}: final model file cannot be read: {exc}"
        if actual != expected:
            return (
                f"{label}: {model_path.name} has digest {actual}, "
                f"closing record's final_model_digest is {expected}"
            )
        return None

    def _report(
        self, ok: bool, failure: str | None, seq: int | None, notes: list[str] | None = None
    ) -> VerifyReport:
        key = key_fingerprint(self.server_hex) if self.server_hex else None
        if ok:
            parts = [
                f"OK: {self.n} records, {self.rounds} rounds",
                f"{self.site_signatures} site signatures checked"
                if self.check_sites
                else "site signatures NOT checked",
            ]
            if self.closing is not None:
                parts.append(f"closed ({self.closing['reason']})")
            parts.extend(notes or [])
            parts.append(f"server key {key}")
            summary = "; ".join(parts)
        else:
            summary = f"FAILED: {failure}"
        return VerifyReport(
            ok=ok,
            records=self.n,
            first_failure=failure,
            summary=summary,
            failed_seq=seq,
            closed=self.closing is not None,
            rounds=self.rounds,
            site_signatures=self.site_signatures if self.check_sites else 0,
            server_key=key,
            final_model_digest=self.current,
            notes=notes or [],
        )

    def _record(self, i: int, row: Row, prev: str | None) -> str:
        seq_col, type_col, digest, signature, signed = row
        label = type_col if isinstance(type_col, str) and type_col in RECORD_TYPES else "?"
        if not isinstance(signed, str):
            raise _Failure(i, label, "signed bytes are not text")
        try:
            env = parse_json(signed)
        except ValueError as exc:
            raise _Failure(i, label, f"signed bytes are not valid JSON ({exc})") from None
        if type(env) is not dict or env.keys() != _SIGNED_KEY_SET:
            got = sorted(env) if type(env) is dict else type(env).__name__
            raise _Failure(i, label, f"envelope fields are {got}, expected {sorted(SIGNED_KEYS)}")
        rtype = env["type"]
        if label == "?" and rtype in RECORD_TYPES:
            label = rtype
        if rtype not in RECORD_TYPES:
            raise _Failure(i, label, f"unknown record type {rtype!r}")
        self._check_position(i, label, env, seq_col, type_col, prev)
        data = signed.encode("utf-8")
        actual = prefixed_digest(data)
        if digest != actual:
            raise _Failure(i, label, f"digest mismatch: stored {digest!r}, recomputed {actual}")
        try:
            canonical = canonical_json_parsed(env)
        except ValueError as exc:
            raise _Failure(i, label, f"signed bytes cannot be canonical JSON ({exc})") from None
        if canonical != data:
            raise _Failure(i, label, "signed bytes are not in canonical JSON form")
        body = env["body"]
        try:
            validate_body(rtype, body)
        except ValueError as exc:
            raise _Failure(i, label, str(exc)) from None
        if rtype == "genesis":
            self._genesis(i, body)
        assert self.server is not None
        # one encoding only: an upper-cased (or otherwise re-encoded) signature is a change
        # to the stored chain, even though it decodes to the same bytes
        if not isinstance(signature, str) or not _SIG_HEX.fullmatch(signature):
            raise _Failure(
                i, label, "server signature is not 128 lower-case hex characters (its one encoding)"
            )
        signature_bytes = bytes.fromhex(signature)
        self._queue(
            (
                i,
                label,
                "server signature invalid",
                self.server,
                signature_bytes,
                actual.encode("ascii"),
            )
        )
        self.last_label = label
        handler = self._handlers.get(rtype)
        if handler is not None:
            handler(i, body)
        return actual

    def _check_position(
        self, i: int, label: str, env: dict[str, Any], seq_col: Any, type_col: Any,
        prev: str | None,
    ) -> None:
        """Schema, seq, type column, genesis position, closing record and prev link."""
        rtype = env["type"]
        if env["schema"] != SCHEMA_VERSION:
            raise _Failure(
                i, label, f"unknown schema {env['schema']!r} (expected {SCHEMA_VERSION!r})"
            )
        if env["seq"] != i or seq_col != i:
            raise _Failure(
                i,
                label,
                f"seq is {env['seq']!r} (row {seq_col!r}), expected {i}: "
                "records missing, duplicated or reordered",
            )
        if type_col != rtype:
            raise _Failure(i, label, f"type column {type_col!r} disagrees with envelope {rtype!r}")
        if (i == 0) != (rtype == "genesis"):
            what = "first record must be genesis" if i == 0 else "genesis record after record 0"
            raise _Failure(i, label, what)
        if self.closing is not None:
            if rtype != "resume" or self.closing["reason"] != "interrupted":
                raise _Failure(i, label, f"record follows the closing record {self.closed_at}")
            self.closing = None  # an interrupted run was resumed: its chain goes on
        if env["prev"] != prev:
            raise _Failure(i, label, f"prev link is {env['prev']!r}, expected {prev!r}")

    def _genesis(self, i: int, body: dict[str, Any]) -> None:
        self.server_hex = body["server_public_key"]
        if self.expected_server_key is not None and self.server_hex != self.expected_server_key:
            raise _Failure(
                i,
                "genesis",
                f"server key {key_fingerprint(self.server_hex)} is not the expected key "
                f"{_fingerprint_or_raw(self.expected_server_key)}",
            )
        try:
            self.server = load_public_key(self.server_hex)
        except ValueError as exc:
            raise _Failure(i, "genesis", f"server_public_key unusable ({exc})") from None
        self.run_id = body["run_id"]
        self._run_id_json = canonical_json_parsed(self.run_id).decode("utf-8")
        for site in body["sites"]:
            self._add_site(i, "genesis", site, 0)
        self.initial = self.current = body["initial_model_digest"]

    def _add_site(self, i: int, label: str, site: dict[str, Any], from_round: int) -> None:
        site_id = site["site_id"]
        if site_id in self.sites:
            raise _Failure(i, label, f"site {site_id!r} is already known")
        try:
            self.sites[site_id] = (load_public_key(site["public_key"]), from_round)
        except ValueError as exc:
            raise _Failure(i, label, f"site {site_id!r} public key unusable ({exc})") from None
        signature = site.get("declaration")
        if signature is not None and self.check_sites:
            # the site's own signed statement of its example count (the bound of its weight)
            if site.get("num_examples") is None or not verify_declaration(
                site["public_key"], signature, self.run_id, site_id, site["data_fingerprint"],
                site["num_examples"],
            ):
                raise _Failure(i, label, f"site {site_id!r} declaration signature invalid")
            self.site_signatures += 1

    def _site_join(self, i: int, body: dict[str, Any]) -> None:
        self._add_site(i, "site_join", body["site"], body["round"])

    def _resume(self, i: int, body: dict[str, Any]) -> None:
        k = body["from_round"]
        if k == 0:
            self.current = self.initial
        elif k in self.after_round:
            self.current = self.after_round[k]
        else:
            raise _Failure(i, "resume", f"resumes from round {k}, which is not in the chain")
        self.after_round = {r: m for r, m in self.after_round.items() if r <= k}
        self.last_round = k

    def _round(self, i: int, body: dict[str, Any]) -> None:
        r = body["round"]
        self.rounds += 1
        if r <= self.last_round:
            raise _Failure(i, "round", f"round {r} does not follow round {self.last_round}")
        if body["model_in"] != self.current:
            raise _Failure(
                i,
                "round",
                f"round {r} model_in {body['model_in']} is not the current model {self.current}",
            )
        if body["status"] == "skipped":
            if body["model_out"] != body["model_in"]:
                raise _Failure(i, "round", f"skipped round {r} changed the model")
        else:
            self.current = body["model_out"]
        self.after_round[r] = self.current
        self.last_round = r
        seen: set[str] = set()
        accepted: set[str] = set()
        prefix = '{"data_fingerprint":"'
        middle = f'","round":{r},"run_id":{self._run_id_json},"schema":"{CONTRIBUTION_SCHEMA}"'
        for c in body["contributions"]:
            site_id = c["site_id"]
            if site_id in seen:
                raise _Failure(i, "round", f"site {site_id!r} contributes twice in round {r}")
            seen.add(site_id)
            if c["fate"] == "accepted":
                accepted.add(site_id)
            entry = self.sites.get(site_id)
            if entry is None:
                raise _Failure(i, "round", f"contribution from unknown site {site_id!r}")
            if entry[1] > r:
                raise _Failure(
                    i, "round", f"site {site_id!r} contributes in round {r} before joining"
                )
            if self.check_sites:
                message = (
                    prefix
                    + c["data_fingerprint"]
                    + middle
                    + ',"update_digest":"'
                    + c["update_digest"]
                    + '"}'
                ).encode("utf-8")
                self._queue(
                    (
                        i,
                        "round",
                        f"site signature of {site_id!r} invalid",
                        entry[0],
                        bytes.fromhex(c["signature"]),
                        message,
                    )
                )
                self.site_signatures += 1
            secagg = c["detail"].get("secagg")
            if (secagg is not None or c["num_examples"] is None) and body["secagg"] is None:
                # a secret count or SecAgg+ detail belongs to secure rounds only
                raise _Failure(
                    i, "round", f"site {site_id!r} contribution has a SecAgg+ form (null "
                    "num_examples or detail.secagg) in a round without SecAgg+"
                )
            if secagg is not None:
                self._secagg_contribution(i, r, site_id, secagg, entry[0])
        if accepted != set(body["accepted"]) or len(body["accepted"]) != len(accepted):
            raise _Failure(
                i,
                "round",
                f"accepted list {sorted(body['accepted'])} does not match the accepted "
                f"contributions {sorted(accepted)}",
            )
        self._evaluations(i, r, body)

    def _evaluations(self, i: int, r: int, body: dict[str, Any]) -> None:
        """The sites' signed evaluations of the round's model (optional field): each from
        a known site, once, of ``model_out``, with its signature checked and counted."""
        seen: set[str] = set()
        for e in body.get("evaluations", ()):
            site_id = e["site_id"]
            entry = self.sites.get(site_id)
            if entry is None or entry[1] > r:
                why = "unknown" if entry is None else "not yet joined"
                raise _Failure(i, "round", f"evaluation from {why} site {site_id!r}")
            if site_id in seen:
                raise _Failure(i, "round", f"site {site_id!r} evaluates twice in round {r}")
            seen.add(site_id)
            if e["model_digest"] != body["model_out"]:
                raise _Failure(
                    i, "round", f"site {site_id!r} evaluation is of model {e['model_digest']}, "
                    f"not the round's model_out {body['model_out']}"
                )
            if self.check_sites:
                message = evaluation_message(self.run_id, r, e["model_digest"], e["loss"],
                                             e["metrics"], e["num_examples"])
                what = f"site signature of {site_id!r} over its evaluation invalid"
                self._queue((i, "round", what, entry[0], bytes.fromhex(e["signature"]), message))
                self.site_signatures += 1

    def _secagg_contribution(
        self, i: int, r: int, site_id: str, secagg: Any, public: Ed25519PublicKey
    ) -> None:
        """A SecAgg+ contribution's ``detail.secagg``: its fate, and the site's signature
        over its unmask reply (checked like the contribution's own)."""
        where = f"site {site_id!r} contribution detail.secagg"
        if type(secagg) is not dict or secagg.get("fate") not in _SECAGG_FATES:
            raise _Failure(
                i, "round", f"{where}: expected an object with a fate in {sorted(_SECAGG_FATES)}"
            )
        unmask = {k: secagg[k] for k in ("unmask_digest", "unmask_signature") if k in secagg}
        if not unmask:
            return
        digest, signature = unmask.get("unmask_digest"), unmask.get("unmask_signature")
        if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            raise _Failure(i, "round", f"{where}.unmask_digest: expected 'sha256:<64 hex>'")
        if not (isinstance(signature, str) and _SIG_HEX.fullmatch(signature)):
            raise _Failure(
                i, "round", f"{where}.unmask_signature: expected 128 lower-case hex characters"
            )
        if self.check_sites:
            message = unmask_message(self.run_id, r, digest)
            what = f"site signature of {site_id!r} over its SecAgg+ unmask reply invalid"
            self._queue((i, "round", what, public, bytes.fromhex(signature), message))
            self.site_signatures += 1

    def _closing(self, i: int, body: dict[str, Any]) -> None:
        self.closing = body
        self.closed_at = i
        final = body["final_model_digest"]
        if final is not None and final != self.current:
            raise _Failure(
                i, "closing", f"final_model_digest {final} is not the current model {self.current}"
            )


def _fingerprint_or_raw(key: str) -> str:
    try:
        return key_fingerprint(key)
    except ValueError:
        return repr(key)


def _check_signatures(jobs: list[_Job]) -> tuple[int, str] | None:
    """Verify a chunk of signatures; return the first failure as (seq, label\\0what)."""
    for seq, label, what, public, signature, message in jobs:
        try:
            public.verify(signature, message)
        except InvalidSignature:
            return seq, f"{label}\x00{what}"
    return None

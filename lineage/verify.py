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

Two modes. Default: every digest and link above, plus each site's attestation chain (a
chained contribution's ``prev`` must be the attestation digest of the same site's previous
one, :mod:`fedsilo.lineage.roundcheck`), but of the server's signatures only the head
record's (it covers every record through the links) and of each site chain's signatures
only its last (it covers the chain; the site's ledger check on ``prev`` makes that sound:
docs/lineage.md, "Trust argument"); unchained contributions, declarations, evaluations and
unmask replies are checked one by one. ``all_signatures=True`` (``--all-signatures``)
checks every signature. Signatures are checked on a thread pool while the main thread
parses; ``cryptography`` releases the GIL while verifying.

Where each check lives: the chain walk (envelope, position, links, digests, bodies, sites,
resumes, closing) in :mod:`fedsilo.lineage.chaincheck`, round records in
:mod:`fedsilo.lineage.roundcheck`, the signature pool in :mod:`fedsilo.lineage.sigcheck`,
the two-process walk of a long chain in default mode (a forked child checks the records
after a seam; same verdict and first failure) in :mod:`fedsilo.lineage.split`; this module
runs the pass, checks the model file and writes the :class:`VerifyReport`.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import split
from .canonical import canonical_json_parsed
from .chaincheck import ChainChecker, Row
from .digests import npz_digest
from .envelope import SIGNED_KEYS
from .errors import LineageError
from .keys import key_fingerprint
from .runs import locate_run
from .sigcheck import Failure
from .store import read_rows

__all__ = ["Row", "VerifyReport", "verify_envelopes", "verify_rows", "verify_run"]


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
        server_signatures: number of server signatures checked (default mode: 1, the head).
        all_signatures: whether every signature was checked (``--all-signatures``).
        processes: 2 when a forked child checked the chain's back half, else 1.
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
    server_signatures: int = 0
    all_signatures: bool = False
    processes: int = 1


def verify_run(
    run_dir: Path,
    *,
    check_site_signatures: bool = True,
    expected_server_key: str | None = None,
    workers: int | None = None,
    all_signatures: bool = False,
    processes: int | None = None,
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
        all_signatures: check every signature (``--all-signatures``). Default: every digest
            and link, the server's signature on the head record and the last attestation of
            each site's chain (docs/lineage.md, "Trust argument").
        processes: default mode on a long chain (16 MB of records or more) checks its back
            half in a forked child (:mod:`fedsilo.lineage.split`); 1: one process; 2: two
            whenever the chain can be cut, however short. Same verdict and first failure.

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
        all_signatures=all_signatures,
        processes=processes,
    )


def verify_envelopes(
    envelopes: Sequence[dict[str, Any]], *, check_site_signatures: bool = True,
    all_signatures: bool = False,
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
    return verify_rows(rows, model_path=None, check_site_signatures=check_site_signatures,
                       all_signatures=all_signatures)


def verify_rows(
    rows: Sequence[Row],
    *,
    model_path: Path | None,
    check_site_signatures: bool = True,
    expected_server_key: str | None = None,
    workers: int | None = None,
    all_signatures: bool = False,
    processes: int | None = None,
) -> VerifyReport:
    """Verify raw store rows ``(seq, type, digest, signature, signed)``.

    Args:
        rows: rows in storage order, as :func:`fedsilo.lineage.store.read_rows` returns.
        model_path: the saved final model to check against the closing record; ``None``
            skips the model file check (used when continuing a chain).
        check_site_signatures, expected_server_key, workers, all_signatures, processes: see
            :func:`verify_run`.
    """
    checker = ChainChecker(len(rows), check_site_signatures, expected_server_key, workers,
                           all_signatures)
    # the walk allocates millions of short-lived dicts and keeps none in cycles: the cyclic
    # collector would only rescan them (a third of a long chain's time, measured)
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run(checker, rows, model_path, processes)
    finally:
        if collecting:
            gc.enable()
        checker.signatures.shutdown()


def _walk(checker: ChainChecker, rows: Sequence[Row], start: int, stop: int,
          prev: str | None) -> tuple[Failure | None, str | None]:
    """Check ``rows[start:stop]``; the first failure (or None) and the last digest."""
    for i in range(start, stop):
        try:
            prev = checker.record(i, rows[i], prev)
        except Failure as exc:
            return exc, prev
    return None, prev


def _seam(checker: ChainChecker, rows: Sequence[Row], processes: int | None) -> int | None:
    """Where to cut the chain between two processes (:mod:`fedsilo.lineage.split`), or
    None: one process (asked for, ``--all-signatures``, or a short chain in auto mode)."""
    if processes == 1 or checker.all_signatures or not split.can_fork():
        return None
    seam = split.choose_seam(rows, split.MIN_SPLIT_BYTES if processes is None else 0)
    return seam if seam is not None and 1 <= seam < len(rows) else None


def _run(checker: ChainChecker, rows: Sequence[Row], model_path: Path | None,
         processes: int | None) -> VerifyReport:
    """The pass: every record, then the signatures' verdict, then the model file."""
    failure, prev = _walk(checker, rows, 0, min(1, len(rows)), None)  # the genesis
    seam = _seam(checker, rows, processes) if failure is None else None
    child = None if seam is None else split.Child(checker, rows, seam)
    checker.processes = 1 if child is None else 2
    try:
        if failure is None:
            failure, prev = _walk(checker, rows, 1, seam or len(rows), prev)
        if child is not None and not (failure is None
                                      and split.adopt(checker, child.result(), prev)):
            child.cancel()  # failed before the seam, or the child's walk is not adopted
            if failure is None:
                failure, prev = _walk(checker, rows, seam or 0, len(rows), prev)
    finally:
        if child is not None:
            child.cancel()
    if failure is None:
        checker.finish()
    signature_failure = checker.signatures.first_failure()
    if signature_failure is not None and (
        failure is None or signature_failure.seq < failure.seq
    ):
        failure = signature_failure
    if failure is None and not rows:
        failure = Failure(0, "missing", "the chain is empty (expected a genesis record)")
    if failure is not None:
        return _report(checker, False, str(failure), failure.seq)
    notes: list[str] = []
    if checker.closing is None and model_path is not None and model_path.exists():
        return _report(
            checker,
            False,
            f"record {checker.n - 1} ({checker.last_label}): the chain ends without a closing "
            f"record but {model_path.name} exists (records removed from the end?)",
            checker.n - 1,
        )
    if checker.closing is not None and model_path is not None:
        model_failure = _check_model(checker, model_path)
        if model_failure is not None:
            return _report(checker, False, model_failure, checker.closed_at)
        if checker.closing["final_model_digest"] is not None:
            notes.append(
                "final model matches model.npz"
                if model_path.exists()
                else f"no model.npz (run ended: {checker.closing['reason']})"
            )
    elif checker.closing is None:
        notes.append("open chain (no closing record): a valid prefix; model.npz not checked")
    return _report(checker, True, None, None, notes)


def _mode(checker: ChainChecker) -> str:
    """Which verification mode ran, and the server signatures it checked."""
    server = (f"{checker.server_signatures} server signature"
              f"{'' if checker.server_signatures == 1 else 's'} checked")
    if checker.all_signatures:
        return f"{server}; mode --all-signatures (every signature)"
    return (f"{server}; default mode (every digest and link; the head record's server "
            f"signature and the last attestation of each of {len(checker.attested)} site "
            "chains; --all-signatures checks each)")


def _check_model(checker: ChainChecker, model_path: Path) -> str | None:
    """Whether ``model_path`` is the closing record's final model; a failure or None."""
    assert checker.closing is not None
    expected = checker.closing["final_model_digest"]
    label = f"record {checker.closed_at} (closing)"
    if expected is None:
        return None
    if not model_path.exists():
        if checker.closing["reason"] in ("error", "interrupted"):
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
    checker: ChainChecker, ok: bool, failure: str | None, seq: int | None,
    notes: list[str] | None = None,
) -> VerifyReport:
    """The report of a finished pass (``failure`` and ``seq`` are None when ``ok``)."""
    key = key_fingerprint(checker.server_hex) if checker.server_hex else None
    if ok:
        parts = [
            f"OK: {checker.n} records, {checker.rounds} rounds",
            f"{checker.site_signatures} site signatures checked"
            if checker.check_sites
            else "site signatures NOT checked",
        ]
        if checker.closing is not None:
            parts.append(f"closed ({checker.closing['reason']})")
        parts.extend(notes or [])
        parts.append(_mode(checker))
        parts.append(f"server key {key}")
        summary = "; ".join(parts)
    else:
        summary = f"FAILED: {failure}"
    return VerifyReport(
        ok=ok,
        records=checker.n,
        first_failure=failure,
        summary=summary,
        failed_seq=seq,
        closed=checker.closing is not None,
        rounds=checker.rounds,
        site_signatures=checker.site_signatures if checker.check_sites else 0,
        server_signatures=checker.server_signatures,
        all_signatures=checker.all_signatures,
        processes=checker.processes,
        server_key=key,
        final_model_digest=checker.current,
        notes=notes or [],
    )

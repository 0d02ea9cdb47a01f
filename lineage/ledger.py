"""A site's own append-only ledger of what it sent (JSON Lines, fsync per line)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .canonical import canonical_json
from .errors import LineageError
from .schema import is_count as _is_count
from .schema import is_digest as _is_digest
from .schema import is_sig as _is_sig
from .schema import is_str as _is_str
from .store import parse_json

_SENT_FIELDS: dict[str, tuple[Any, str]] = {
    "update_digest": (_is_digest, "'sha256:<64 hex>'"),
    "data_fingerprint": (_is_digest, "'sha256:<64 hex>'"),
    "num_examples": (_is_count, "an int >= 0"),
    "signature": (_is_sig, "128 lowercase hex"),
}
_UNMASKED_FIELDS: dict[str, tuple[Any, str]] = {
    "unmask_digest": (_is_digest, "'sha256:<64 hex>'"),
    "signature": (_is_sig, "128 lowercase hex"),
}
_STATUSES = ("sent", "refused", "unmasked")
_COMMON_FIELDS: dict[str, tuple[Any, str]] = {
    "run_id": (_is_str, "a non-empty string"),
    "site_id": (_is_str, "a non-empty string"),
    "round": (_is_count, "an int >= 0"),
}


def validate_ledger_entry(entry: Mapping[str, Any]) -> None:
    """Check one ledger entry.

    Required: ``run_id``, ``site_id``, ``round``, ``status`` (``"sent"``, ``"refused"`` or
    ``"unmasked"``), ``time``; for ``sent`` also ``update_digest``, ``data_fingerprint``,
    ``num_examples``, ``signature`` (under SecAgg+: of the masked vector sent, with
    ``"secagg": "masked_input"``); for ``refused`` also ``reason``; for ``unmasked`` (a
    SecAgg+ unmask reply) ``unmask_digest`` and ``signature``. Other keys are kept as they are.

    Raises:
        ValueError: naming the first missing or malformed field.
    """
    if not isinstance(entry, Mapping):
        raise ValueError(f"ledger entry must be a JSON object, got {type(entry).__name__}")
    status = entry.get("status")
    if status not in _STATUSES:
        raise ValueError(
            f"ledger entry status must be 'sent', 'refused' or 'unmasked', got {status!r}"
        )
    fields = dict(_COMMON_FIELDS)
    if status == "sent":
        fields.update(_SENT_FIELDS)
    elif status == "unmasked":
        fields.update(_UNMASKED_FIELDS)
    else:
        fields["reason"] = (_is_str, "a non-empty string")
    for name, (check, expected) in fields.items():
        if name not in entry:
            raise ValueError(f"ledger entry ({status}) is missing field {name!r}")
        if not check(entry[name]):
            raise ValueError(
                f"ledger entry field {name!r}: expected {expected}, got {entry[name]!r:.80}"
            )
    if not isinstance(entry.get("time"), str):
        raise ValueError(
            f"ledger entry field 'time': expected an ISO 8601 string, got {entry.get('time')!r}"
        )


class SiteLedger:
    """Append-only JSON Lines ledger kept by a site.

    Each :meth:`append` writes one canonical-JSON line and fsyncs it. A line torn by a crash
    is isolated (the next append starts a fresh line) and reported by :meth:`entries`.

    Args:
        path: the ledger file (e.g. ``RUN_DIR/sites/<site_id>/ledger.jsonl``); created with
            mode 0600 (parent directory 0700) on first append.
        fsync: fsync after every line (default). Turn off only for synthetic benchmarks.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._attested: dict[str, set[str]] | None = None  # run id -> its attestations

    def append(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and durably append one entry; ``time`` defaults to now (UTC, ISO 8601).

        Args:
            entry: see :func:`validate_ledger_entry`.

        Returns:
            The entry as written.

        Raises:
            ValueError: if the entry is malformed.
        """
        stored = dict(entry)
        stored.setdefault("time", datetime.now(UTC).isoformat())
        validate_ledger_entry(stored)
        line = canonical_json(stored) + b"\n"
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(self.path, size) != b"\n":
                line = b"\n" + line  # isolate a line torn by an earlier crash
            os.write(fd, line)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._remember(stored)
        return stored

    def attestations(self, run_id: str) -> set[str]:
        """The digests of every chained attestation this site signed in run ``run_id``
        (the ``attestation`` field of its ``sent`` entries); empty without a ledger file."""
        if self._attested is None:  # read the file; this object's appends keep it current
            self._attested = {}
            raw = self.path.read_bytes() if self.path.exists() else b""
            for line in raw.split(b"\n"):
                try:  # a line torn by a crash holds no attestation: skip it, don't fail
                    entry = parse_json(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("run_id"), str) \
                        and isinstance(entry.get("attestation"), str):
                    self._remember(entry)
        return self._attested.get(run_id, set())

    def _remember(self, entry: Mapping[str, Any]) -> None:
        if self._attested is not None and entry.get("status") == "sent" \
                and "attestation" in entry:
            self._attested.setdefault(entry["run_id"], set()).add(entry["attestation"])

    def prev_refusal(self, run_id: str, prev: str) -> str | None:
        """Why this site refuses to chain an attestation onto ``prev``, or None.

        ``prev`` must be the genesis value or an attestation this site itself signed in this
        run (its ledger holds it). That is what makes checking only a chain's last signature
        sound: a server cannot make the site vouch, through its next signature, for an
        attestation the site never made. (An earlier attestation of its own than the last is
        accepted: a reply that reached the ledger but not the chain — late, screened out
        before recording, or lost in a server crash — must not lock the site out; the chain
        then verifies without it, and ``reconcile`` reports it as missing.)
        """
        from .signing import GENESIS_ATTESTATION

        if prev == GENESIS_ATTESTATION or prev in self.attestations(run_id):
            return None
        # another process may have appended since this object read the file (a simulated
        # site built in several engine workers writes one ledger): read it again
        self._attested = None
        if prev in self.attestations(run_id):
            return None
        return (f"attestation prev {prev[:19]}… is not an attestation this site signed in run "
                f"{run_id!r} (its ledger has no such entry)")

    def entries(self) -> list[dict[str, Any]]:
        """Read and validate every entry, in order (read-only).

        Raises:
            LineageError: if the file is missing or unreadable, or a line is not a valid
                entry (the message names the line number).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise LineageError(f"{self.path}: ledger file not found") from None
        except OSError as exc:
            raise LineageError(f"{self.path}: cannot read ledger ({exc.strerror})") from None
        entries = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                entry = parse_json(raw.decode("utf-8"))
                validate_ledger_entry(entry)
            except (UnicodeDecodeError, ValueError) as exc:
                raise LineageError(
                    f"{self.path}: line {number}: not a ledger entry ({exc})"
                ) from None
            entries.append(entry)
        return entries


def _last_byte(path: Path, size: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1)

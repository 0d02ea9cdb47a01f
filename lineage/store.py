"""SQLite store of the chain: writing (one transaction per record) and read-only access.

Layout of ``lineage.sqlite``::

    meta(key TEXT PRIMARY KEY, value TEXT)            -- ('schema', 'fedsilo.lineage/1')
    records(seq INTEGER PRIMARY KEY, type TEXT, digest TEXT, signature TEXT,
            signed TEXT)                              -- signed = canonical signed bytes

While a run writes, the database is in WAL mode; :meth:`LineageWriter.close` checkpoints
and switches back to rollback-journal mode, so a finished run is one self-contained file.
Each append is one ``synchronous=FULL`` transaction: a crash at any point leaves a valid
prefix of the chain.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .canonical import SCHEMA_VERSION
from .envelope import seal
from .errors import LineageError
from .keys import public_key_hex
from .records import Record, validate_body

_CREATE = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE records (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, digest TEXT NOT NULL, "
    "signature TEXT NOT NULL, signed TEXT NOT NULL)",
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_READ_MMAP_BYTES = 1 << 30


def parse_json(text: str | bytes) -> Any:
    """Parse JSON, rejecting NaN/Infinity (which canonical JSON never contains).

    ``orjson`` (several times faster than ``json`` on the 200+ MB of a long chain) parses;
    what it refuses (integers beyond 64 bits, which ``json`` reads) falls back to
    ``json``, so both give the same value for any text either accepts.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _DECODER.decode(text)


class LineageWriter:
    """Appends signed records to a run's SQLite chain.

    Use :meth:`create` for a new run, :meth:`open` to continue one (resume).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        key: Ed25519PrivateKey,
        seq: int,
        head: str | None,
        closed_chain: bool,
        server_public_key: str | None,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._conn: sqlite3.Connection | None = conn
        self._key = key
        self._seq = seq
        self._head = head
        self._closed_chain = closed_chain
        self._server_public_key = server_public_key
        # a chain reopened after an "interrupted" closing record goes on with a resume record
        self._resume_next = False
        # Called inside each append's transaction, after the INSERT and before the commit
        # (with the record type); tests use it to crash the process mid-write.
        self.before_commit: Callable[[str], None] | None = None

    @classmethod
    def create(
        cls, db_path: Path, key: Ed25519PrivateKey, *, durable: bool = True
    ) -> LineageWriter:
        """Create a new, empty chain store at ``db_path``.

        Args:
            db_path: the SQLite file to create (normally ``RUN_DIR/lineage.sqlite``); its
                parent directory must exist.
            key: the server's Ed25519 private key; its public key must be the genesis
                record's ``server_public_key``.
            durable: fsync every record (``synchronous=FULL``, default). ``False`` is only
                for building synthetic benchmark chains.

        Raises:
            LineageError: if ``db_path`` already exists.
        """
        db_path = Path(db_path)
        if db_path.exists():
            raise LineageError(f"{db_path}: already exists; use LineageWriter.open to continue")
        conn = _connect_rw(db_path, durable)
        with conn:
            for statement in _CREATE:
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        return cls(conn, key, 0, None, False, None)

    @classmethod
    def open(cls, db_path: Path, key: Ed25519PrivateKey, *, durable: bool = True) -> LineageWriter:
        """Continue an existing chain (resume after a crash or interruption).

        The whole existing chain is checked first (digests, links, server signatures,
        record schemas; site signatures are not re-checked here, ``verify`` does that).

        Args:
            db_path: the existing ``lineage.sqlite``.
            key: the server's key; must match the genesis record's ``server_public_key``.
            durable: see :meth:`create`.

        Raises:
            LineageError: if the store is missing or invalid, the chain fails the check, the
                key is not the chain's server key, or the chain already has a closing record
                (except ``interrupted``: then the next record must be a resume record).
        """
        from .verify import verify_rows  # local import: verify builds on this module

        db_path = Path(db_path)
        report = verify_rows(read_rows(db_path), model_path=None, check_site_signatures=False)
        if not report.ok:
            raise LineageError(f"{db_path}: cannot continue an invalid chain: {report.summary}")
        envelopes = read_chain(db_path)
        genesis_key = envelopes[0]["body"]["server_public_key"]
        if public_key_hex(key) != genesis_key:
            raise LineageError(f"{db_path}: the given key is not this chain's server key")
        last = envelopes[-1]
        interrupted = last["type"] == "closing" and last["body"]["reason"] == "interrupted"
        if last["type"] == "closing" and not interrupted:
            raise LineageError(f"{db_path}: chain is closed (it ends with a closing record)")
        conn = _connect_rw(db_path, durable)
        writer = cls(conn, key, len(envelopes), last["digest"], False, genesis_key)
        writer._resume_next = interrupted  # an operator's stop is resumable (SIGINT/SIGTERM)
        return writer

    @property
    def head(self) -> str | None:
        """Digest of the last record written, ``None`` for an empty chain."""
        return self._head

    @property
    def seq(self) -> int:
        """Sequence number the next record will get."""
        return self._seq

    def append(self, record: Record) -> str:
        """Validate, sign and durably store one record; returns its digest.

        Args:
            record: a :class:`GenesisRecord` (first record only), then any of
                :class:`SiteJoinRecord`, :class:`RoundRecord`, :class:`ResumeRecord`,
                and at most one final :class:`ClosingRecord`.

        Raises:
            ValueError: if the record is malformed, out of place (genesis not first, anything
                after closing) or a genesis whose server key is not this writer's key.
            LineageError: if the writer is closed.
        """
        if self._conn is None:
            raise LineageError("LineageWriter is closed")
        record_type = getattr(record, "TYPE", None)
        if record_type is None:
            raise ValueError(f"not a lineage record: {type(record).__name__}")
        body = record.to_dict()
        validate_body(record_type, body, f"{record_type} record")
        if self._closed_chain:
            raise ValueError("the chain already has a closing record; nothing may follow it")
        if self._resume_next and record_type != "resume":
            raise ValueError("a chain closed as interrupted continues only with a resume record"
                             f" (got {record_type})")
        if (record_type == "genesis") != (self._seq == 0):
            raise ValueError(
                "the first record must be a GenesisRecord, and only the first"
                f" (got {record_type} at seq {self._seq})"
            )
        if record_type == "genesis":
            if body["server_public_key"] != public_key_hex(self._key):
                raise ValueError("genesis server_public_key does not match the writer's key")
            self._server_public_key = body["server_public_key"]
        data, digest, signature = seal(self._key, self._seq, record_type, self._head, body)
        with self._conn:
            self._conn.execute(
                "INSERT INTO records (seq, type, digest, signature, signed) VALUES (?,?,?,?,?)",
                (self._seq, record_type, digest, signature, data.decode("utf-8")),
            )
            if self.before_commit is not None:  # crash-injection point for resume tests
                self.before_commit(record_type)
        self._seq += 1
        self._head = digest
        self._closed_chain = record_type == "closing"
        self._resume_next = False
        return digest

    def close(self) -> None:
        """Checkpoint the WAL, leave a single self-contained file, and close. Idempotent."""
        if self._conn is None:
            return
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.execute("PRAGMA journal_mode=DELETE")
        self._conn.close()
        self._conn = None

    def __enter__(self) -> LineageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect_rw(db_path: Path, durable: bool) -> sqlite3.Connection:
    # check_same_thread=False: the server appends round records from one background
    # persistence thread; appends are serialised by the caller, never concurrent.
    conn = sqlite3.connect(db_path, isolation_level="DEFERRED", check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    return conn


@contextmanager
def connect_readonly(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Open a lineage store for reading without ever writing to it or next to it.

    A finished store (rollback-journal mode, no side files) is opened with a ``mode=ro``
    URI. A store left in WAL mode by a crashed writer keeps its latest records in
    ``lineage.sqlite-wal``; since even a read-only SQLite connection may create or update the
    ``-shm``/``-wal`` side files, such a store (or one with a hot ``-journal``) is copied with
    its side files into a temporary directory and read from there. A WAL-mode file without a
    ``-wal`` file is opened ``immutable``.

    Yields:
        A connection to a checked lineage store (closed, and any copy removed, on exit).

    Raises:
        LineageError: if the file is missing, not SQLite, corrupted, or not a lineage store
            of a known schema.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        raise LineageError(f"{db_path}: file not found")
    if not db_path.is_file():
        raise LineageError(f"{db_path}: not a file")
    try:
        with db_path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise LineageError(f"{db_path}: cannot read ({exc.strerror})") from None
    wal_mode = len(header) >= 20 and header.startswith(b"SQLite format 3\x00") and header[18] == 2
    sides = [Path(f"{db_path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
    has_wal = sides[0].exists() and sides[0].stat().st_size > 0
    with tempfile.TemporaryDirectory(prefix="fedsilo-lineage-") as tmp:
        if (wal_mode and has_wal) or sides[2].exists():
            target = Path(tmp) / "lineage.sqlite"
            shutil.copyfile(db_path, target)
            for side in sides:
                if side.exists():
                    shutil.copyfile(
                        side, Path(tmp) / ("lineage.sqlite" + side.name[len(db_path.name) :])
                    )
            uri = target.as_uri()
        else:
            uri = db_path.resolve().as_uri() + ("?mode=ro&immutable=1" if wal_mode else "?mode=ro")
        try:
            conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise LineageError(f"{db_path}: cannot open as SQLite ({exc})") from None
        try:
            _check_store(conn, db_path, wal_mode and not has_wal)
            yield conn
        finally:
            conn.close()


def _check_store(conn: sqlite3.Connection, db_path: Path, wal_missing: bool) -> None:
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not {"meta", "records"} <= tables:
            if wal_missing:
                raise LineageError(
                    f"{db_path}: no chain in this file: it is in WAL mode (a run that did not "
                    f"close) and its {db_path.name}-wal file is missing; copy it along"
                )
            raise LineageError(f"{db_path}: not a fedsilo lineage store (no meta/records tables)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            found = None if row is None else row[0]
            raise LineageError(
                f"{db_path}: unsupported lineage schema {found!r} (expected {SCHEMA_VERSION!r})"
            )
    except sqlite3.Error as exc:
        raise LineageError(f"{db_path}: {_describe(exc)}") from None


def _describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "not a database" in text:
        return "not a SQLite database"
    if "malformed" in text or "corrupt" in text:
        return f"corrupted SQLite file ({text})"
    return f"cannot read SQLite file ({text})"


def read_rows(db_path: Path) -> list[tuple[int, str, str, str, str]]:
    """Raw rows ``(seq, type, digest, signature, signed)`` in ``seq`` order (read-only).

    Raises:
        LineageError: see :func:`connect_readonly`, or if a row's columns have wrong types.
    """
    with connect_readonly(db_path) as conn:
        try:
            # read through a memory map: no copy into SQLite's page cache (a long chain's
            # hundreds of MB, ~15% of the read's CPU time, measured)
            conn.execute(f"PRAGMA mmap_size={_READ_MMAP_BYTES}")
            return conn.execute(
                "SELECT seq, type, digest, signature, signed FROM records ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as exc:
            raise LineageError(f"{db_path}: {_describe(exc)}") from None


def read_chain(db_path: Path) -> list[dict[str, Any]]:
    """Read every record envelope, in order, from a lineage store (read-only).

    Args:
        db_path: a ``lineage.sqlite`` file.

    Returns:
        A list of envelopes ``{schema, seq, type, prev, body, digest, signature}``. Nothing
        is checked beyond parseability: use :func:`fedsilo.lineage.verify_run` for that.

    Raises:
        LineageError: if the file is not a readable lineage store or a record is not JSON.
    """
    envelopes = []
    for seq, _type, digest, signature, signed in read_rows(db_path):
        try:
            envelope = parse_json(signed)
        except (ValueError, TypeError) as exc:
            raise LineageError(f"{db_path}: record {seq} is not valid JSON ({exc})") from None
        if type(envelope) is not dict:
            raise LineageError(f"{db_path}: record {seq} is not a JSON object")
        envelope["digest"] = digest
        envelope["signature"] = signature
        envelopes.append(envelope)
    return envelopes

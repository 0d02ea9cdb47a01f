"""The chain walk of ``lineage verify``: one record after another, in chain order.

:class:`ChainChecker` checks each stored row's envelope (fields, schema version, seq, type,
prev link, digest, canonical form), its body against its record dataclass
(:func:`fedsilo.lineage.records.validate_body`), and the chain's state: the genesis keys and
sites, site joins, resumes, the closing record; round records are checked by its
:class:`~fedsilo.lineage.roundcheck.RoundChecks` part. Signatures are only queued on a
:class:`~fedsilo.lineage.sigcheck.SignaturePool`; :mod:`fedsilo.lineage.verify` collects
their verdict and writes the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import SCHEMA_VERSION, canonical_json_parsed, is_canonical, prefixed_digest
from .envelope import SIGNED_KEYS
from .fastcheck import float_residual, round_columns, round_residual
from .keys import key_fingerprint, load_public_key
from .records import RECORD_TYPES, validate_body
from .roundcheck import SIG_HEX, RoundChecks, _site_job
from .sigcheck import Failure, SignaturePool
from .signing import verify_declaration
from .store import _DECODER, parse_json

_SIGNED_KEY_SET = frozenset(SIGNED_KEYS)
_HANDLERS = {"site_join": "_site_join", "resume": "_resume", "closing": "_closing"}

#: a store row: (seq, type, digest, signature, signed JSON text)
Row = tuple[Any, Any, Any, Any, Any]


class ChainChecker(RoundChecks):
    """The state of one verification pass over a chain.

    Args:
        n: number of rows in the chain.
        check_sites: check site signatures (declarations, contributions, evaluations).
        expected_server_key: the pinned server key (64 hex), or None.
        workers: signature-checking threads (default: ``os.cpu_count()``).
        all_signatures: check every signature (the server's on every record, each chained
            site attestation's); default: the server's on the head record only and each
            site chain's last attestation (every digest and link is checked either way).
    """

    def __init__(
        self, n: int, check_sites: bool, expected_server_key: str | None, workers: int | None,
        all_signatures: bool = False,
    ) -> None:
        self.n = n
        self.check_sites = check_sites
        self.all_signatures = all_signatures
        self.attested: dict[str, str] = {}
        self.attest_history: list[tuple[Sequence[str], Sequence[str]]] = []
        self.chain_heads: dict[str, Any] = {}
        self.server_signatures = 0
        self.processes = 1  # 2 when the back half was checked in a child (split.py)
        self._head_job: Any = None
        self.expected_server_key = expected_server_key
        self.signatures = SignaturePool(workers)
        self.server: Ed25519PublicKey | None = None
        self.server_hex: str | None = None
        self.run_id = ""
        self._run_id_json = ""
        self.sites: dict[str, tuple[Ed25519PublicKey, int]] = {}
        self.initial: str | None = None
        self.current: str | None = None
        self.after_round: dict[int, str] = {}  # round -> model after it (effective history)
        self.last_round = -1
        self.rounds = 0
        self.site_signatures = 0
        self.closing: dict[str, Any] | None = None
        self.closed_at = -1
        self.last_label = "?"

    def record(self, i: int, row: Row, prev: str | None) -> str:
        """Check row ``i`` (whose predecessor's digest is ``prev``); return its digest.

        Raises:
            Failure: naming what is wrong with the record.
        """
        seq_col, type_col, digest, signature, signed = row
        label = type_col if isinstance(type_col, str) and type_col in RECORD_TYPES else "?"
        env, data = self._envelope(i, label, signed)
        rtype = env["type"]
        if label == "?" and rtype in RECORD_TYPES:
            label = rtype
        if rtype not in RECORD_TYPES:
            raise Failure(i, label, f"unknown record type {rtype!r}")
        self._check_position(i, label, env, seq_col, type_col, prev)
        actual = prefixed_digest(data)
        if digest != actual:
            raise Failure(i, label, f"digest mismatch: stored {digest!r}, recomputed {actual}")
        # a round body's schema first (its columns then narrow the canonical check); a
        # failure of it is named only after the canonical check, as always
        columns = round_columns(env["body"]) if rtype == "round" else None
        residual = float_residual(env) if columns is None else round_residual(env, columns)
        if not is_canonical(env, data, residual):
            # the reference: Python's own parse (orjson reads integers beyond 64 bits as
            # floats) and encoder
            env = _DECODER.decode(signed)
            try:
                canonical = canonical_json_parsed(env)
            except ValueError as exc:
                raise Failure(i, label, f"signed bytes cannot be canonical JSON ({exc})") from None
            if canonical != data:
                raise Failure(i, label, "signed bytes are not in canonical JSON form")
            columns = None  # the body parsed anew: checked by the reference below
        body = env["body"]
        if columns is None:
            try:
                validate_body(rtype, body)
            except ValueError as exc:
                raise Failure(i, label, str(exc)) from None
        if rtype == "genesis":
            self._genesis(i, body)
        assert self.server is not None
        # one encoding only: an upper-cased (or otherwise re-encoded) signature is a change
        # to the stored chain, even though it decodes to the same bytes
        if not isinstance(signature, str) or not SIG_HEX.fullmatch(signature):
            raise Failure(
                i, label, "server signature is not 128 lower-case hex characters (its one encoding)"
            )
        job = (i, label, "server signature invalid", self.server, bytes.fromhex(signature),
               actual.encode("ascii"))
        if self.all_signatures:
            self.signatures.queue(job)
            self.server_signatures += 1
        else:
            # the head record's signature covers every record before it through the prev
            # links (each digest covers its prev): checked once, at the end (`finish`)
            self._head_job = job
        self.last_label = label
        if rtype == "round":
            self._round(i, body, columns)
        elif rtype != "genesis":  # looked up by name: a subclass's override counts
            getattr(self, _HANDLERS[rtype])(i, body)
        return actual

    def finish(self) -> None:
        """After a walk without failure: queue the deferred checks of default mode, the
        server's signature on the head record and each site chain's last attestation."""
        if self.all_signatures:
            return
        if self._head_job is not None:
            self.signatures.queue(self._head_job)
            self.server_signatures += 1
        if self.check_sites:
            for head in self.chain_heads.values():
                self.signatures.queue(_site_job(*head))
                self.site_signatures += 1

    @staticmethod
    def _envelope(i: int, label: str, signed: Any) -> tuple[dict[str, Any], bytes]:
        """The parsed envelope (exactly the signed fields) and its signed bytes."""
        if not isinstance(signed, str):
            raise Failure(i, label, "signed bytes are not text")
        try:
            env = parse_json(signed)
        except ValueError as exc:
            raise Failure(i, label, f"signed bytes are not valid JSON ({exc})") from None
        if type(env) is not dict or env.keys() != _SIGNED_KEY_SET:
            got = sorted(env) if type(env) is dict else type(env).__name__
            raise Failure(i, label, f"envelope fields are {got}, expected {sorted(SIGNED_KEYS)}")
        return env, signed.encode("utf-8")

    def _check_position(
        self, i: int, label: str, env: dict[str, Any], seq_col: Any, type_col: Any,
        prev: str | None,
    ) -> None:
        """Schema, seq, type column, genesis position, closing record and prev link."""
        rtype = env["type"]
        if env["schema"] != SCHEMA_VERSION:
            raise Failure(
                i, label, f"unknown schema {env['schema']!r} (expected {SCHEMA_VERSION!r})"
            )
        if env["seq"] != i or seq_col != i:
            raise Failure(
                i, label,
                f"seq is {env['seq']!r} (row {seq_col!r}), expected {i}: "
                "records missing, duplicated or reordered",
            )
        if type_col != rtype:
            raise Failure(i, label, f"type column {type_col!r} disagrees with envelope {rtype!r}")
        if (i == 0) != (rtype == "genesis"):
            what = "first record must be genesis" if i == 0 else "genesis record after record 0"
            raise Failure(i, label, what)
        if self.closing is not None:
            if rtype != "resume" or self.closing["reason"] != "interrupted":
                raise Failure(i, label, f"record follows the closing record {self.closed_at}")
            self.closing = None  # an interrupted run was resumed: its chain goes on
        if env["prev"] != prev:
            raise Failure(i, label, f"prev link is {env['prev']!r}, expected {prev!r}")

    def _genesis(self, i: int, body: dict[str, Any]) -> None:
        self.server_hex = body["server_public_key"]
        if self.expected_server_key is not None and self.server_hex != self.expected_server_key:
            raise Failure(
                i, "genesis",
                f"server key {key_fingerprint(self.server_hex)} is not the expected key "
                f"{_fingerprint_or_raw(self.expected_server_key)}",
            )
        try:
            self.server = load_public_key(self.server_hex)
        except ValueError as exc:
            raise Failure(i, "genesis", f"server_public_key unusable ({exc})") from None
        self.run_id = body["run_id"]
        self._run_id_json = canonical_json_parsed(self.run_id).decode("utf-8")
        for site in body["sites"]:
            self._add_site(i, "genesis", site, 0)
        self.initial = self.current = body["initial_model_digest"]

    def _add_site(self, i: int, label: str, site: dict[str, Any], from_round: int) -> None:
        site_id = site["site_id"]
        if site_id in self.sites:
            raise Failure(i, label, f"site {site_id!r} is already known")
        try:
            self.sites[site_id] = (load_public_key(site["public_key"]), from_round)
        except ValueError as exc:
            raise Failure(i, label, f"site {site_id!r} public key unusable ({exc})") from None
        signature = site.get("declaration")
        if signature is not None and self.check_sites:
            # the site's own signed statement of its example count (the bound of its weight)
            if site.get("num_examples") is None or not verify_declaration(
                site["public_key"], signature, self.run_id, site_id, site["data_fingerprint"],
                site["num_examples"],
            ):
                raise Failure(i, label, f"site {site_id!r} declaration signature invalid")
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
            raise Failure(i, "resume", f"resumes from round {k}, which is not in the chain")
        self.after_round = {r: m for r, m in self.after_round.items() if r <= k}
        self.last_round = k

    def _closing(self, i: int, body: dict[str, Any]) -> None:
        self.closing = body
        self.closed_at = i
        final = body["final_model_digest"]
        if final is not None and final != self.current:
            raise Failure(
                i, "closing", f"final_model_digest {final} is not the current model {self.current}"
            )


def _fingerprint_or_raw(key: str) -> str:
    try:
        return key_fingerprint(key)
    except ValueError:
        return repr(key)

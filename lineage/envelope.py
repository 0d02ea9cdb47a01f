"""The signed envelope around each record body.

Stored per record::

    {"schema": "fedsilo.lineage/1", "seq": n, "type": "<record type>",
     "prev": <digest of record n-1, or null for n == 0>, "body": {...},
     "digest": "sha256:" + sha256_hex(canonical_json({schema, seq, type, prev, body})),
     "signature": hex(Ed25519_sign(server_key, digest.encode("ascii")))}

The bytes ``canonical_json({schema, seq, type, prev, body})`` are the *signed bytes*.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .canonical import SCHEMA_VERSION, canonical_json, prefixed_digest

ENVELOPE_KEYS = frozenset({"schema", "seq", "type", "prev", "body", "digest", "signature"})
SIGNED_KEYS = ("schema", "seq", "type", "prev", "body")


def signed_bytes(seq: int, record_type: str, prev: str | None, body: dict[str, Any]) -> bytes:
    """Canonical bytes whose SHA-256 is the record digest (see module docstring).

    Args:
        seq: position in the chain, from 0.
        record_type: the record's type name (e.g. ``"round"``).
        prev: digest of the previous record, ``None`` for the first.
        body: the record body (dict form).
    """
    return canonical_json(
        {"schema": SCHEMA_VERSION, "seq": seq, "type": record_type, "prev": prev, "body": body}
    )


def seal(
    key: Ed25519PrivateKey, seq: int, record_type: str, prev: str | None, body: dict[str, Any]
) -> tuple[bytes, str, str]:
    """Encode, digest and sign one record.

    Args:
        key: the server's Ed25519 private key.
        seq, record_type, prev, body: see :func:`signed_bytes`.

    Returns:
        ``(signed_bytes, digest, signature_hex)``.
    """
    data = signed_bytes(seq, record_type, prev, body)
    digest = prefixed_digest(data)
    return data, digest, key.sign(digest.encode("ascii")).hex()


def envelope_digest(envelope: dict[str, Any]) -> str:
    """Recompute an envelope's digest from its fields (ignores its ``digest`` field)."""
    return prefixed_digest(canonical_json({k: envelope[k] for k in SIGNED_KEYS}))

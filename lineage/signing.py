"""What a site signs for each contribution, and how anyone checks it."""

from __future__ import annotations

import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .canonical import canonical_json
from .keys import load_public_key

CONTRIBUTION_SCHEMA = "fedsilo.contribution/1"
"""Domain-separation tag inside every signed contribution message."""

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SIG = re.compile(r"[0-9a-f]{128}")


def contribution_message(
    run_id: str, round: int, update_digest: str, data_fingerprint: str
) -> bytes:
    """The canonical bytes a site signs for one contribution.

    ``canonical_json({"schema": "fedsilo.contribution/1", "run_id": run_id,
    "round": round, "update_digest": update_digest, "data_fingerprint": data_fingerprint})``

    Args:
        run_id: the run's id from the genesis record.
        round: the round number (``int`` >= 0) the update answers.
        update_digest: :func:`fedsilo.lineage.update_digest` of the update sent.
        data_fingerprint: :func:`fedsilo.lineage.data_fingerprint` of the site's data.

    Raises:
        ValueError: naming the first argument with a wrong type or format.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    if not isinstance(update_digest, str) or not _DIGEST.fullmatch(update_digest):
        raise ValueError(f"update_digest must be 'sha256:<64 hex>', got {update_digest!r}")
    if not isinstance(data_fingerprint, str) or not _DIGEST.fullmatch(data_fingerprint):
        raise ValueError(f"data_fingerprint must be 'sha256:<64 hex>', got {data_fingerprint!r}")
    return _message(run_id, round, update_digest, data_fingerprint)


def _message(run_id: str, round: int, update_digest: str, data_fingerprint: str) -> bytes:
    """:func:`contribution_message` without argument checks (for already-validated input)."""
    return canonical_json(
        {
            "schema": CONTRIBUTION_SCHEMA,
            "run_id": run_id,
            "round": round,
            "update_digest": update_digest,
            "data_fingerprint": data_fingerprint,
        }
    )


def sign_contribution(
    key: Ed25519PrivateKey, run_id: str, round: int, update_digest: str, data_fingerprint: str
) -> str:
    """Sign a contribution with the site's key; returns the 64-byte signature as hex.

    Args:
        key: the site's Ed25519 private key (:func:`fedsilo.lineage.load_or_create_key`).
        run_id, round, update_digest, data_fingerprint: see :func:`contribution_message`.
    """
    return key.sign(contribution_message(run_id, round, update_digest, data_fingerprint)).hex()


def verify_contribution(
    public_key_hex: str,
    signature_hex: str,
    run_id: str,
    round: int,
    update_digest: str,
    data_fingerprint: str,
) -> bool:
    """Check a site's contribution signature; ``False`` for any malformed input.

    Args:
        public_key_hex: the site's public key (64 hex characters).
        signature_hex: the signature (128 hex characters) from the round record.
        run_id, round, update_digest, data_fingerprint: see :func:`contribution_message`.
    """
    if not isinstance(signature_hex, str) or not _SIG.fullmatch(signature_hex):
        return False
    try:
        public = load_public_key(public_key_hex)
        message = contribution_message(run_id, round, update_digest, data_fingerprint)
        public.verify(bytes.fromhex(signature_hex), message)
    except (ValueError, InvalidSignature):
        return False
    return True

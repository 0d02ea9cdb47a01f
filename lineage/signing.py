"""What a site signs for each contribution, and how anyone checks it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .canonical import canonical_json, prefixed_digest
from .digests import arrays_digest
from .keys import load_public_key

CONTRIBUTION_SCHEMA = "fedsilo.contribution/1"
"""Domain-separation tag inside every signed contribution message (unchained form)."""

CHAINED_CONTRIBUTION_SCHEMA = "fedsilo.contribution/2"
"""Tag of a chained contribution: the message also names the site's previous attestation
(``prev``), so the site's attestations in a run form a hash chain and one signature (the
last) covers every one before it (see docs/lineage.md, "Trust argument")."""

GENESIS_ATTESTATION = "sha256:" + "0" * 64
"""``prev`` of a site's first chained attestation in a run."""

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SIG = re.compile(r"[0-9a-f]{128}")


def contribution_message(
    run_id: str, round: int, update_digest: str, data_fingerprint: str,
    prev: str | None = None,
) -> bytes:
    """The canonical bytes a site signs for one contribution.

    ``canonical_json({"schema": "fedsilo.contribution/1", "run_id": run_id,
    "round": round, "update_digest": update_digest, "data_fingerprint": data_fingerprint})``;
    with ``prev`` (a chained attestation) the schema is ``"fedsilo.contribution/2"`` and the
    object also holds ``"prev": prev``.

    Args:
        run_id: the run's id from the genesis record.
        round: the round number (``int`` >= 0) the update answers.
        update_digest: :func:`fedsilo.lineage.update_digest` of the update sent.
        data_fingerprint: :func:`fedsilo.lineage.data_fingerprint` of the site's data.
        prev: the :func:`attestation_digest` of the site's previous attestation in this run
            (:data:`GENESIS_ATTESTATION` for its first); None: the unchained form.

    Raises:
        ValueError: naming the first argument with a wrong type or format.
    """
    if prev is not None and (not isinstance(prev, str) or not _DIGEST.fullmatch(prev)):
        raise ValueError(f"prev must be 'sha256:<64 hex>', got {prev!r}")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    if not isinstance(update_digest, str) or not _DIGEST.fullmatch(update_digest):
        raise ValueError(f"update_digest must be 'sha256:<64 hex>', got {update_digest!r}")
    if not isinstance(data_fingerprint, str) or not _DIGEST.fullmatch(data_fingerprint):
        raise ValueError(f"data_fingerprint must be 'sha256:<64 hex>', got {data_fingerprint!r}")
    return _message(run_id, round, update_digest, data_fingerprint, prev)


def attestation_digest(message: bytes) -> str:
    """The digest naming one signed attestation: ``"sha256:" + sha256(message)`` over the
    exact signed bytes (:func:`contribution_message`). The next attestation's ``prev``."""
    return prefixed_digest(message)


def _verifies(public_key_hex: str, signature_hex: str, message: Callable[..., bytes],
              *fields: Any) -> bool:
    """One check for every signed site statement: the signature in its one canonical
    encoding (128 lower-case hex), the key usable, ``message(*fields)`` well formed and
    signed by that key; ``False`` for anything else."""
    if not isinstance(signature_hex, str) or not _SIG.fullmatch(signature_hex):
        return False
    try:
        load_public_key(public_key_hex).verify(bytes.fromhex(signature_hex), message(*fields))
    except (ValueError, InvalidSignature):
        return False
    return True


def _message(run_id: str, round: int, update_digest: str, data_fingerprint: str,
             prev: str | None = None) -> bytes:
    """:func:`contribution_message` without argument checks (for already-validated input)."""
    body = {
        "schema": CONTRIBUTION_SCHEMA if prev is None else CHAINED_CONTRIBUTION_SCHEMA,
        "run_id": run_id,
        "round": round,
        "update_digest": update_digest,
        "data_fingerprint": data_fingerprint,
    }
    if prev is not None:
        body["prev"] = prev
    return canonical_json(body)


def sign_contribution(
    key: Ed25519PrivateKey, run_id: str, round: int, update_digest: str, data_fingerprint: str,
    prev: str | None = None,
) -> str:
    """Sign a contribution with the site's key; returns the 64-byte signature as hex.

    Args:
        key: the site's Ed25519 private key (:func:`fedsilo.lineage.load_or_create_key`).
        run_id, round, update_digest, data_fingerprint, prev: see
            :func:`contribution_message`.
    """
    message = contribution_message(run_id, round, update_digest, data_fingerprint, prev)
    return key.sign(message).hex()


def verify_contribution(
    public_key_hex: str,
    signature_hex: str,
    run_id: str,
    round: int,
    update_digest: str,
    data_fingerprint: str,
    prev: str | None = None,
) -> bool:
    """Check a site's contribution signature; ``False`` for any malformed input.

    Args:
        public_key_hex: the site's public key (64 hex characters).
        signature_hex: the signature (128 hex characters) from the round record.
        run_id, round, update_digest, data_fingerprint, prev: see
            :func:`contribution_message`.
    """
    return _verifies(public_key_hex, signature_hex, contribution_message,
                     run_id, round, update_digest, data_fingerprint, prev)


# --- SecAgg+ unmask replies -------------------------------------------------------------
# Under SecAgg+ a site signs its masked input like any update (`sign_contribution` over
# the masked vector's `update_digest`) and, separately, its unmask reply: the shares it
# reveals so that the server can remove masks. The unmask signature has its own schema
# tag, so neither signature can be passed off as the other.

UNMASK_SCHEMA = "fedsilo.secagg-unmask/1"
"""Domain-separation tag inside every signed SecAgg+ unmask message."""


def _share_matrix(shares: list[bytes], name: str) -> np.ndarray:
    if not all(isinstance(s, bytes) for s in shares):
        raise ValueError(f"{name}: every share must be bytes")
    width = len(shares[0]) if shares else 0
    if any(len(s) != width for s in shares):
        raise ValueError(f"{name}: shares must all have the same length")
    return np.frombuffer(b"".join(shares), dtype=np.uint8).reshape(len(shares), width)


def unmask_digest(
    b_owners: list[int], b_shares: list[bytes], sk_owners: list[int], sk_shares: list[bytes]
) -> str:
    """Digest of a SecAgg+ unmask reply, exactly as the site sends it.

    ``arrays_digest`` of ``{"b_owners": uint64[n], "b_shares": uint8[n, share bytes],
    "sk_owners": uint64[m], "sk_shares": uint8[m, share bytes]}`` (owners in the order sent,
    little-endian), see :mod:`fedsilo.lineage.digests`.

    Raises:
        ValueError: if an owner is not an unsigned 64-bit int, or the shares of one list
            are not bytes of one length.
    """
    if any(not isinstance(o, int) or not 0 <= o < 1 << 64 for o in [*b_owners, *sk_owners]):
        raise ValueError("owners must be unsigned 64-bit node ids")
    return arrays_digest({
        "b_owners": np.asarray(b_owners, dtype="<u8").reshape(-1),
        "b_shares": _share_matrix(list(b_shares), "b_shares"),
        "sk_owners": np.asarray(sk_owners, dtype="<u8").reshape(-1),
        "sk_shares": _share_matrix(list(sk_shares), "sk_shares"),
    })


def unmask_message(run_id: str, round: int, digest: str) -> bytes:
    """The canonical bytes a site signs for its unmask reply of ``round``.

    ``canonical_json({"schema": "fedsilo.secagg-unmask/1", "run_id": run_id,
    "round": round, "unmask_digest": digest})``

    Raises:
        ValueError: naming the first argument with a wrong type or format.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"unmask_digest must be 'sha256:<64 hex>', got {digest!r}")
    return canonical_json(
        {"schema": UNMASK_SCHEMA, "run_id": run_id, "round": round, "unmask_digest": digest}
    )


def sign_unmask(key: Ed25519PrivateKey, run_id: str, round: int, digest: str) -> str:
    """Sign an unmask reply's digest (:func:`unmask_digest`); the signature as lower-case hex."""
    return key.sign(unmask_message(run_id, round, digest)).hex()


def verify_unmask(
    public_key_hex: str, signature_hex: str, run_id: str, round: int, digest: str
) -> bool:
    """Check a site's unmask signature; ``False`` for any malformed input (including a
    signature that is not 128 lower-case hex characters)."""
    return _verifies(public_key_hex, signature_hex, unmask_message, run_id, round, digest)


DECLARATION_SCHEMA = "fedsilo.declaration/1"
"""Domain-separation tag inside every signed handshake declaration."""


def declaration_message(
    run_id: str, site_id: str, data_fingerprint: str, num_examples: int
) -> bytes:
    """The canonical bytes a site signs at the handshake: who it is, its data, its count.

    ``canonical_json({"schema": "fedsilo.declaration/1", "run_id": run_id,
    "site_id": site_id, "data_fingerprint": data_fingerprint, "num_examples": num_examples})``

    The declared example count bounds every count the site may report in a round (its
    aggregation weight); signing it makes the bound the site's own statement, recorded in
    the genesis record.

    Raises:
        ValueError: naming the first argument with a wrong type or format.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    if not isinstance(site_id, str) or not site_id:
        raise ValueError(f"site_id must be a non-empty str, got {site_id!r}")
    if not isinstance(data_fingerprint, str) or not _DIGEST.fullmatch(data_fingerprint):
        raise ValueError(f"data_fingerprint must be 'sha256:<64 hex>', got {data_fingerprint!r}")
    if type(num_examples) is not int or num_examples < 1:
        raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
    return canonical_json(
        {
            "schema": DECLARATION_SCHEMA,
            "run_id": run_id,
            "site_id": site_id,
            "data_fingerprint": data_fingerprint,
            "num_examples": num_examples,
        }
    )


def sign_declaration(
    key: Ed25519PrivateKey, run_id: str, site_id: str, data_fingerprint: str, num_examples: int
) -> str:
    """Sign a handshake declaration (see :func:`declaration_message`); 128 hex characters."""
    return key.sign(declaration_message(run_id, site_id, data_fingerprint, num_examples)).hex()


def verify_declaration(
    public_key_hex: str,
    signature_hex: str,
    run_id: str,
    site_id: str,
    data_fingerprint: str,
    num_examples: int,
) -> bool:
    """Check a site's handshake declaration signature; ``False`` for any malformed input."""
    return _verifies(public_key_hex, signature_hex, declaration_message,
                     run_id, site_id, data_fingerprint, num_examples)


# --- per-site evaluation ----------------------------------------------------------------
# Each sampled site scores the round's global model on its own held-out split and signs
# what it reports, so that a round record's per-site metrics are the sites' statements,
# not the server's. Its own schema tag keeps it apart from every other signed message.

EVALUATION_SCHEMA = "fedsilo.evaluation/1"
"""Domain-separation tag inside every signed per-site evaluation message."""


def evaluation_message(
    run_id: str,
    round: int,
    model_digest: str,
    loss: float,
    metrics: dict[str, float],
    num_examples: int,
) -> bytes:
    """The canonical bytes a site signs for its evaluation of one global model.

    ``canonical_json({"schema": "fedsilo.evaluation/1", "run_id": run_id, "round": round,
    "model_digest": model_digest, "loss": loss, "metrics": metrics,
    "num_examples": num_examples})``

    Args:
        run_id: the run's id from the genesis record.
        round: the round whose global model was evaluated (``int`` >= 0).
        model_digest: :func:`fedsilo.lineage.arrays_digest` of the model the site evaluated
            (computed by the site from the weights it received).
        loss: the site's loss on its held-out split (a finite number).
        metrics: the task's other metrics, name -> finite number (canonical JSON: key
            order does not matter).
        num_examples: how many held-out examples the site evaluated (``int`` >= 0).

    Raises:
        ValueError: naming the first argument with a wrong type or format.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    if not isinstance(model_digest, str) or not _DIGEST.fullmatch(model_digest):
        raise ValueError(f"model_digest must be 'sha256:<64 hex>', got {model_digest!r}")
    if not _finite(loss):
        raise ValueError(f"loss must be a finite number, got {loss!r}")
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and _finite(v) for k, v in metrics.items()
    ):
        raise ValueError(f"metrics must map names to finite numbers, got {metrics!r:.120}")
    if type(num_examples) is not int or num_examples < 0:
        raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}")
    return canonical_json(
        {
            "schema": EVALUATION_SCHEMA,
            "run_id": run_id,
            "round": round,
            "model_digest": model_digest,
            "loss": loss,
            "metrics": metrics,
            "num_examples": num_examples,
        }
    )


def _finite(value: object) -> bool:
    return type(value) in (int, float) and bool(np.isfinite(value))  # type: ignore[arg-type]


def sign_evaluation(
    key: Ed25519PrivateKey,
    run_id: str,
    round: int,
    model_digest: str,
    loss: float,
    metrics: dict[str, float],
    num_examples: int,
) -> str:
    """Sign a per-site evaluation (see :func:`evaluation_message`); 128 hex characters."""
    message = evaluation_message(run_id, round, model_digest, loss, metrics, num_examples)
    return key.sign(message).hex()


def verify_evaluation(
    public_key_hex: str,
    signature_hex: str,
    run_id: str,
    round: int,
    model_digest: str,
    loss: float,
    metrics: dict[str, float],
    num_examples: int,
) -> bool:
    """Check a site's evaluation signature; ``False`` for any malformed input."""
    return _verifies(public_key_hex, signature_hex, evaluation_message,
                     run_id, round, model_digest, loss, metrics, num_examples)

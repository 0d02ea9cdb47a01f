"""Encode the protocol messages as Flower records and decode them defensively.

Each stage's payload is one ConfigRecord under ``RECORD_KEY``; node-id lists travel as
little-endian uint64 bytes (Flower's int fields are signed 64-bit); the masked vector
travels as a uint32 Array in an ArrayRecord under ``MASKED_KEY``. A message may also
carry one stage of the next secure round as a ConfigRecord under ``NEXT_KEY`` (fewer
message exchanges per round: see `fedsilo.server.secagg_round`): a masked-input request
(or the run's handshake query) the next round's setup request, and its reply the site's
key advertisement; an unmask request the site's share request of the next round, and its
reply the site's encrypted shares. Decoding a site's reply never raises: anything
unexpected becomes `Malformed(reason)`, which the server records against that site.

The masked vector is the one large field (d + 2 words). Flower's ``Array(ndarray)`` /
``Array.numpy()`` go through ``np.save`` / ``np.load`` (~0.4 ms per site and round at
d = 10^5, more than a mask); `masked_array` writes the same ``.npy`` bytes with one
copy and `masked_view` reads them back as a read-only view without copying.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ...common import npy
from .config import SecAggConfig
from .messages import (
    KeyAdvert,
    Malformed,
    MaskedReply,
    MaskedRequest,
    SetupRequest,
    ShareReply,
    ShareRequest,
    UnmaskReply,
    UnmaskRequest,
)

RECORD_KEY = "secagg"
MASKED_KEY = "secagg_masked"
NEXT_KEY = "secagg_next"
"""Record of one stage of the next secure round riding on another message: its setup
request (in a masked-input request or the run's handshake query) or a site's share
request (in an unmask request), and the site's answer in the reply."""
ATTEST_KEY = "secagg_attest"
"""ConfigRecord in a site's masked-input and unmask replies: what the site signed with its
Ed25519 site key (``digest``, ``signature`` and, with the masked input, its
``data_fingerprint``); see `fedsilo.client.secagg_handler`."""
MESSAGE_TYPES = {s: f"train.secagg_{s}" for s in ("setup", "share", "masked", "unmask")}


def ids_to_bytes(ids: list[int]) -> bytes:
    """Node ids as little-endian uint64 bytes."""
    return np.asarray(ids, dtype="<u8").tobytes()


def ids_from_bytes(raw: Any) -> list[int]:
    """Inverse of `ids_to_bytes`; raises ValueError on a malformed field."""
    if not isinstance(raw, bytes) or len(raw) % 8:
        raise ValueError("node id list must be bytes of length divisible by 8")
    return np.frombuffer(raw, dtype="<u8").tolist()


MASKED_DTYPE = np.dtype("<u4")
def masked_array(vec: np.ndarray) -> Array:
    """A 1-D uint32 vector as a Flower `Array` (standard ``.npy`` bytes), one copy."""
    v = np.ascontiguousarray(vec, dtype=MASKED_DTYPE).reshape(-1)
    return Array(dtype=str(v.dtype), shape=(v.size,), stype="numpy.ndarray",
                 data=npy.vector_bytes(v))


def masked_view(arr: Array) -> np.ndarray:
    """Read-only uint32 view of a 1-D ``.npy`` `Array`; ValueError if it is anything else.

    Parameters
    ----------
    arr:
        The ``masked`` entry of a site's reply (untrusted: every header field is checked).
    """
    data = arr.data
    try:
        dtype, shape, fortran, offset = npy.layout(data)
    except npy.NpyError as exc:
        raise ValueError(f"masked vector: {exc}") from None
    if dtype != MASKED_DTYPE or len(shape) != 1 or fortran:
        raise ValueError(f"masked vector must be a 1-D little-endian uint32 array, got "
                         f"{dtype} {shape}")
    if len(data) - offset != shape[0] * MASKED_DTYPE.itemsize:
        raise ValueError(f"masked vector carries {len(data) - offset} bytes, header promises "
                         f"{shape[0] * MASKED_DTYPE.itemsize}")
    return np.frombuffer(data, dtype=MASKED_DTYPE, count=shape[0], offset=offset)


def _blist(raw: Any) -> list[bytes]:
    if isinstance(raw, list) and all(isinstance(x, bytes) for x in raw):
        return raw
    raise ValueError("expected a list of bytes")


def _bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    raise ValueError("expected bytes")


def encode(msg: object, server_round: int) -> RecordDict:
    """Records for a protocol message; ``server_round`` is added to detect stale state."""
    cr: dict[str, Any] = {"round": server_round}
    out = RecordDict()
    if isinstance(msg, SetupRequest):
        cfg = msg.config
        cr.update(run_id=msg.run_id, vector_length=msg.vector_length,
                  num_sampled=msg.num_sampled,
                  degree=-1 if cfg.degree is None else cfg.degree,
                  threshold=-1 if cfg.threshold is None else cfg.threshold,
                  clip_range=float(cfg.clip_range), bits=cfg.bits,
                  max_weight=float(cfg.max_weight))
    elif isinstance(msg, KeyAdvert):
        cr.update(c_pk=msg.c_pk, s_pk=msg.s_pk)
    elif isinstance(msg, ShareRequest):
        cr.update(participants=ids_to_bytes(msg.participants),
                  neighbours=ids_to_bytes(msg.neighbours), c_pks=list(msg.c_pks),
                  s_pks=list(msg.s_pks), own_c_pk=msg.own_c_pk, own_s_pk=msg.own_s_pk)
    elif isinstance(msg, ShareReply):
        cr.update(receivers=ids_to_bytes(msg.receivers), ciphertexts=list(msg.ciphertexts),
                  commitment=msg.commitment)
    elif isinstance(msg, MaskedRequest):
        cr.update(senders=ids_to_bytes(msg.senders), ciphertexts=list(msg.ciphertexts))
    elif isinstance(msg, MaskedReply):
        out[MASKED_KEY] = ArrayRecord({"masked": masked_array(msg.masked)})
    elif isinstance(msg, UnmaskRequest):
        cr.update(survivors=ids_to_bytes(msg.survivors), dropped=ids_to_bytes(msg.dropped))
    elif isinstance(msg, UnmaskReply):
        cr.update(b_owners=ids_to_bytes(msg.b_owners), b_shares=list(msg.b_shares),
                  sk_owners=ids_to_bytes(msg.sk_owners), sk_shares=list(msg.sk_shares))
    else:
        raise TypeError(f"not a SecAgg message: {type(msg).__name__}")
    out[RECORD_KEY] = ConfigRecord(cr)
    return out


def request_round(content: RecordDict) -> int:
    """The round a request belongs to (raises ValueError if absent)."""
    cr = content.get(RECORD_KEY)
    if not isinstance(cr, ConfigRecord) or not isinstance(cr.get("round"), int):
        raise ValueError(f"message has no '{RECORD_KEY}' ConfigRecord with an int 'round'")
    return int(cr["round"])


def _setup_request(cr: ConfigRecord) -> SetupRequest:
    cfg = SecAggConfig.from_dict(dict(cr))
    return SetupRequest(str(cr["run_id"]), int(cr["round"]), cfg,  # type: ignore[arg-type]
                        int(cr["vector_length"]), int(cr["num_sampled"]))  # type: ignore[arg-type]


def decode_next_setup(content: RecordDict) -> SetupRequest | None:
    """The setup request riding on a masked-input request or a handshake query, if any
    (raises ValueError if present but malformed)."""
    cr = content.get(NEXT_KEY)
    if cr is None:
        return None
    if not isinstance(cr, ConfigRecord):
        raise ValueError(f"'{NEXT_KEY}' must be a ConfigRecord")
    try:
        return _setup_request(cr)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed secagg next-round setup request: {e}") from None


def decode_next_keys(content: RecordDict, next_round: int) -> KeyAdvert | Malformed | None:
    """A site's key advertisement for ``next_round`` riding on its masked-input or
    handshake reply: None if absent, `Malformed` if unreadable or for another round (never
    raises)."""
    cr = content.get(NEXT_KEY)
    if cr is None:
        return None
    if not isinstance(cr, ConfigRecord) or cr.get("round") != next_round:
        return Malformed(f"'{NEXT_KEY}' record is not a key advertisement for round {next_round}")
    try:
        return KeyAdvert(_bytes(cr["c_pk"]), _bytes(cr["s_pk"]))
    except (KeyError, ValueError) as e:
        return Malformed(f"{type(e).__name__}: {e}")


def decode_next_share(content: RecordDict, next_round: int) -> ShareRequest | None:
    """The share request of round ``next_round`` riding on an unmask request, if any
    (raises ValueError if present but malformed or for another round)."""
    cr = content.get(NEXT_KEY)
    if cr is None:
        return None
    if not isinstance(cr, ConfigRecord) or cr.get("round") != next_round:
        raise ValueError(f"'{NEXT_KEY}' record is not a share request for round {next_round}")
    return decode_request("share", RecordDict({RECORD_KEY: cr}))  # type: ignore[return-value]


def decode_next_shares(content: RecordDict, next_round: int) -> ShareReply | Malformed | None:
    """A site's encrypted shares for ``next_round`` riding on its unmask reply: None if
    absent, `Malformed` if unreadable or for another round (never raises)."""
    cr = content.get(NEXT_KEY)
    if cr is None:
        return None
    if not isinstance(cr, ConfigRecord):
        return Malformed(f"'{NEXT_KEY}' must be a ConfigRecord")
    return decode_reply("share", RecordDict({RECORD_KEY: cr}), next_round)  # type: ignore[return-value]


def decode_request(stage: str, content: RecordDict) -> object:
    """Decode a server request at a site (raises ValueError if malformed)."""
    cr = content[RECORD_KEY]
    try:
        if stage == "setup":
            return _setup_request(cr)
        if stage == "share":
            return ShareRequest(ids_from_bytes(cr["participants"]),
                                ids_from_bytes(cr["neighbours"]), _blist(cr["c_pks"]),
                                _blist(cr["s_pks"]), _bytes(cr["own_c_pk"]),
                                _bytes(cr["own_s_pk"]))
        if stage == "masked":
            return MaskedRequest(ids_from_bytes(cr["senders"]), _blist(cr["ciphertexts"]))
        if stage == "unmask":
            return UnmaskRequest(ids_from_bytes(cr["survivors"]), ids_from_bytes(cr["dropped"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed secagg {stage} request: {e}") from None
    raise ValueError(f"unknown secagg stage {stage!r}")


def decode_reply(stage: str, content: RecordDict, server_round: int) -> object:
    """Decode a site's reply; returns `Malformed(reason)` instead of raising."""
    try:
        cr = content[RECORD_KEY]
        if not isinstance(cr, ConfigRecord) or cr.get("round") != server_round:
            return Malformed(f"missing '{RECORD_KEY}' record for round {server_round}")
        if stage == "setup":
            return KeyAdvert(_bytes(cr["c_pk"]), _bytes(cr["s_pk"]))
        if stage == "share":
            return ShareReply(ids_from_bytes(cr["receivers"]), _blist(cr["ciphertexts"]),
                              _bytes(cr["commitment"]))
        if stage == "masked":
            arr = content[MASKED_KEY]
            if not isinstance(arr, ArrayRecord) or list(arr) != ["masked"]:
                return Malformed(f"'{MASKED_KEY}' must be an ArrayRecord with one 'masked' array")
            return MaskedReply(masked_view(arr["masked"]))
        if stage == "unmask":
            return UnmaskReply(ids_from_bytes(cr["b_owners"]), _blist(cr["b_shares"]),
                               ids_from_bytes(cr["sk_owners"]), _blist(cr["sk_shares"]))
    except (KeyError, TypeError, ValueError) as e:
        return Malformed(f"{type(e).__name__}: {e}")
    return Malformed(f"unknown stage {stage!r}")

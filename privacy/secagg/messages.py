"""The eight protocol messages (four stages x request/reply), as plain data.

Node ids are unsigned 64-bit integers. Lists are parallel (``receivers[i]`` goes with
``ciphertexts[i]``) so every message maps one-to-one onto Flower records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import SecAggConfig

STAGES = ("setup", "share", "masked", "unmask")


@dataclass(frozen=True)
class SiteError:
    """A site's refusal or failure at some stage, with the reason it gave."""

    reason: str


@dataclass(frozen=True)
class Malformed:
    """A reply that could not be decoded from its transport records."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """A decoded reply the server refuses before the protocol sees it (e.g. its site's
    signature does not verify): the site is excluded as a dropout would be, with this reason."""

    reason: str


@dataclass(frozen=True)
class SetupRequest:
    """Stage 1, server -> every sampled site: round parameters."""

    run_id: str
    server_round: int
    config: SecAggConfig
    vector_length: int  # d, the length of the flat float32 update
    num_sampled: int  # sites sampled for the round; fixes the threshold


@dataclass(frozen=True)
class KeyAdvert:
    """Stage 1 reply: the site's two fresh X25519 public keys."""

    c_pk: bytes  # channel key (encrypts shares)
    s_pk: bytes  # mask key (pairwise masks)


@dataclass(frozen=True)
class ShareRequest:
    """Stage 2, server -> site: who advertised keys, and the site's neighbours' keys."""

    participants: list[int]  # U1, every site that advertised keys
    neighbours: list[int]
    c_pks: list[bytes]
    s_pks: list[bytes]
    own_c_pk: bytes  # echo of the site's own advertisement (key consistency)
    own_s_pk: bytes


@dataclass(frozen=True)
class ShareReply:
    """Stage 2 reply: encrypted shares for each neighbour and a commitment to the seed."""

    receivers: list[int]
    ciphertexts: list[bytes]
    commitment: bytes


@dataclass(frozen=True)
class MaskedRequest:
    """Stage 3, server -> site: the encrypted shares addressed to it."""

    senders: list[int]
    ciphertexts: list[bytes]


@dataclass(frozen=True)
class MaskedReply:
    """Stage 3 reply: the masked, quantised update (uint32, length d + 2)."""

    masked: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, server -> site: who sent a masked input (survivors) and who dropped."""

    survivors: list[int]
    dropped: list[int]


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 4 reply: seed shares of surviving owners, key shares of dropped owners."""

    b_owners: list[int]
    b_shares: list[bytes]
    sk_owners: list[int]
    sk_shares: list[bytes]

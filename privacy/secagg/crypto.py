"""Cryptographic building blocks, all from `cryptography` (nothing home-made).

- X25519 key agreement between two sites;
- HKDF-SHA256 whose ``info`` binds purpose, run id, round and both node ids;
- AES-256-GCM for the encrypted Shamir shares (associated data binds sender/receiver);
- AES-128-CTR keystream as the mask generator, read as little-endian uint32 (taken from
  OpenSSL's GCM encryption of zeros, see `MaskGenerator`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DOMAIN = b"fedsilo/secagg/v1"
KEY_BYTES = 32
MASK_KEY_BYTES = 16
"""AES key size of the mask keystream: the first 16 bytes of a 32-byte seed (see
`MaskGenerator`)."""
NONCE_BYTES = 12
_PROBE = X25519PrivateKey.generate()  # throw-away key used only to test peer keys
_SHA256 = hashes.SHA256()  # stateless algorithm descriptor, shared by every HKDF call


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (raw 32-byte private key, raw 32-byte public key)."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def public_from_private(sk: bytes) -> bytes:
    """Raw public key of a raw X25519 private key (used to verify reconstructed keys)."""
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


def is_valid_public_key(pk: bytes) -> bool:
    """True if ``pk`` is a 32-byte X25519 key that yields a non-zero shared secret.

    Low-order points (which would make every agreement with them the all-zero secret)
    are refused by OpenSSL during the exchange; this probes with a throw-away key.
    """
    if not isinstance(pk, bytes) or len(pk) != 32:
        return False
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError:
        return False
    return True


def private_key(sk: bytes) -> X25519PrivateKey:
    """Parse a raw 32-byte X25519 private key once (for repeated agreements)."""
    return X25519PrivateKey.from_private_bytes(sk)


def _info(purpose: bytes, run_id: str, server_round: int, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return b"|".join(
        [DOMAIN, purpose, run_id.encode(), server_round.to_bytes(8, "big"),
         lo.to_bytes(8, "big"), hi.to_bytes(8, "big")]
    )


def public_key(pk: bytes) -> X25519PublicKey:
    """Parse a raw 32-byte X25519 public key once (for repeated agreements)."""
    return X25519PublicKey.from_public_bytes(pk)


def agree(
    sk: bytes | X25519PrivateKey, peer_pk: bytes | X25519PublicKey, *, purpose: bytes,
    run_id: str, server_round: int, node_a: int, node_b: int,
) -> bytes:
    """Symmetric 32-byte key shared by ``node_a`` and ``node_b``.

    Parameters
    ----------
    sk, peer_pk:
        Own X25519 private key and the peer's public key (raw bytes or parsed).
    purpose:
        Label separating key uses (``b"mask"`` for pairwise masks, ``b"channel"`` for shares).
    run_id, server_round:
        Bind the key to this run and round, so no key is ever reused across rounds.
    node_a, node_b:
        The two node ids (order does not matter).
    Raises ValueError for a malformed or low-order public key.
    """
    key = sk if isinstance(sk, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(sk)
    peer = peer_pk if isinstance(peer_pk, X25519PublicKey) \
        else X25519PublicKey.from_public_bytes(peer_pk)
    shared = key.exchange(peer)
    return HKDF(
        algorithm=_SHA256, length=KEY_BYTES, salt=None,
        info=_info(purpose, run_id, server_round, node_a, node_b),
    ).derive(shared)


def share_aad(run_id: str, server_round: int, sender: int, receiver: int) -> bytes:
    """Associated data of one encrypted share: direction-sensitive (sender, receiver)."""
    return b"|".join([DOMAIN, b"share", run_id.encode(), server_round.to_bytes(8, "big"),
                      sender.to_bytes(8, "big"), receiver.to_bytes(8, "big")])


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random 96-bit nonce; returns nonce || ciphertext || tag."""
    return encrypt_many([key], [plaintext], [aad])[0]


def encrypt_many(keys: list[bytes], plaintexts: list[bytes], aads: list[bytes]) -> list[bytes]:
    """`encrypt` of each (key, plaintext, aad) triple; the random nonces come from one
    OS CSPRNG call (a site encrypts k shares per round; a system call each costs more
    than the encryption)."""
    if not len(keys) == len(plaintexts) == len(aads):
        raise ValueError("encrypt_many: keys, plaintexts and aads differ in length")
    pool = os.urandom(NONCE_BYTES * len(keys))
    out = []
    for i, (key, pt, aad) in enumerate(zip(keys, plaintexts, aads, strict=True)):
        nonce = pool[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
        out.append(nonce + AESGCM(key).encrypt(nonce, pt, aad))
    return out


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of `encrypt`; raises ValueError if the blob was forged or altered."""
    if len(blob) < NONCE_BYTES + 16:
        raise ValueError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise ValueError("ciphertext failed authentication") from None


def commit(seed: bytes, run_id: str, server_round: int, node_id: int) -> bytes:
    """SHA-256 commitment to a 32-byte uniformly random seed, bound to run/round/node."""
    return hashlib.sha256(
        b"|".join([DOMAIN, b"commit", run_id.encode(), server_round.to_bytes(8, "big"),
                   node_id.to_bytes(8, "big"), seed])
    ).digest()


_tls = threading.local()  # per-thread keystream output buffer


@functools.lru_cache(maxsize=4)
def _zeros(nbytes: int) -> bytes:
    """Immutable all-zero input of the keystream (CTR encryption of zeros), shared."""
    return bytes(nbytes)


# AES-GCM with a 96-bit IV encrypts with AES-CTR from counter block IV || 0^31 || 1 + 1
# (GCTR, NIST SP 800-38D, 6.5): with IV = 0 the keystream starts at block 0^96 || 2.
_MASK_NONCE = bytes(12)
MASK_COUNTER_BLOCK = bytes(12) + (2).to_bytes(4, "big")
"""First AES-CTR counter block of every mask (the counter's low 32 bits increment)."""
MAX_MASK_WORDS = ((1 << 32) - 2) * 4
"""Longest mask: the 32-bit block counter must not wrap (2^32 - 2 blocks of 4 words)."""


class MaskGenerator:
    """Expands 32-byte seeds into uint32 masks with an AES-128-CTR keystream.

    The keystream is AES-128 in counter mode, keyed with the seed's first 16 bytes
    (`MASK_KEY_BYTES`), from counter block `MASK_COUNTER_BLOCK` (GCM's GCTR). AES-128
    because the protocol's strength is set by X25519 (about 128 bits, the work of
    Pollard's rho on Curve25519): a 256-bit mask key would add nothing to it and cost a
    fifth more per keystream (14 AES rounds instead of 10), the bulk of a site's masking
    work. Every seed is uniformly random (an HKDF output or 32 bytes from the OS CSPRNG),
    so its first 16 bytes are a uniform AES-128 key.

    The keystream is produced by `AESGCM.encrypt_into` on an all-zero input, whose
    ciphertext is exactly that keystream (the 16-byte tag is ignored), because
    OpenSSL's GCM code path is faster than its plain CTR one on this hardware (VAES);
    a test checks the output against `modes.CTR` from the same counter block.

    Each seed is used as an AES key exactly once per round (pairwise seeds are HKDF
    outputs bound to run, round and pair; self-mask seeds are fresh random), so a fixed
    counter block is safe. Buffers are reused across calls to avoid allocation.

    Parameters
    ----------
    length:
        Number of uint32 words per mask (at most `MAX_MASK_WORDS`).
    """

    def __init__(self, length: int) -> None:
        if not 1 <= length <= MAX_MASK_WORDS:
            raise ValueError(f"secagg mask length: expected 1..{MAX_MASK_WORDS} words, "
                             f"got {length}")
        self.length = length
        # The buffers are reused across generators: a fresh half-megabyte buffer costs a
        # page fault per 4 KiB page on first touch, more than the AES work at d = 10^5.
        self._zeros = _zeros(4 * length)
        bufs = getattr(_tls, "bufs", None)
        if bufs is None or len(bufs[0]) != 4 * length + 16:
            # ciphertext + 16-byte tag; two, so that two keystreams can be added in one pass
            bufs = _tls.bufs = (bytearray(4 * length + 16), bytearray(4 * length + 16))
        self._bufs = bufs

    def mask(self, seed: bytes) -> np.ndarray:
        """Keystream of ``seed`` as a read-only uint32 view into an internal buffer.

        The view is overwritten by the next call of any `MaskGenerator` of the same length
        in this thread: consume it (add/subtract) first.
        """
        return self._keystream(seed, 0)

    def _keystream(self, seed: bytes, slot: int) -> np.ndarray:
        buf = self._bufs[slot]
        AESGCM(seed[:MASK_KEY_BYTES]).encrypt_into(_MASK_NONCE, self._zeros, None, buf)
        return np.frombuffer(buf, dtype="<u4", count=self.length)

    def add_masks(self, acc: np.ndarray, seeds: Sequence[bytes], negate: Sequence[bool]
                  ) -> np.ndarray:
        """``acc`` plus the keystream of each seed (minus, where ``negate``), in place in the
        uint32 ring; returns ``acc``.

        The keystreams are added two at a time, each pair in one pass over ``acc``
        (`kernels.add_two`): a site adds k + 1 masks to its input and the server removes n
        self masks, and one pass per keystream would read and write ``acc`` twice as often.
        Wrap-around addition is associative and commutative, so the result is that of
        adding them one by one.
        """
        if acc.dtype != np.uint32 or acc.shape != (self.length,) \
                or not acc.flags.c_contiguous or not acc.flags.writeable:
            raise ValueError(f"add_masks: acc must be a writable contiguous uint32 vector of "
                             f"{self.length} words, got {acc.dtype} {acc.shape}")
        if len(seeds) != len(negate):
            raise ValueError(f"add_masks: {len(seeds)} seeds but {len(negate)} signs")
        from .kernels import add_two  # numba: imported on first use

        for i in range(0, len(seeds) - 1, 2):
            add_two(acc, self._keystream(seeds[i], 0), self._keystream(seeds[i + 1], 1),
                    bool(negate[i]), bool(negate[i + 1]))
        if len(seeds) % 2:
            last = self._keystream(seeds[-1], 0)
            (np.subtract if negate[-1] else np.add)(acc, last, out=acc)
        return acc

    def random_words(self) -> np.ndarray:
        """Uniformly random uint32 words (the keystream of a fresh random key), as a view.

        Used as the stochastic-rounding noise of quantisation: AES-CTR under a one-time
        key from the OS CSPRNG, several times faster than numpy's generator or
        ``os.urandom`` at d = 10^5. Same buffer as `mask`: consume it before the next call.
        """
        return self.mask(os.urandom(KEY_BYTES))


def prg(seed: bytes, length: int) -> np.ndarray:
    """A fresh uint32 array of ``length`` keystream words (convenience, allocates)."""
    return MaskGenerator(length).mask(seed).copy()

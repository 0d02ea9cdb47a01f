"""Key agreement, HKDF binding, authenticated encryption and the mask keystream."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedsilo.privacy.secagg import crypto


def _pair() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    return crypto.generate_keypair(), crypto.generate_keypair()


def test_agreement_is_symmetric_and_bound_to_context() -> None:
    (a_sk, a_pk), (b_sk, b_pk) = _pair()
    kw = dict(purpose=b"mask", run_id="r", server_round=3)
    k_ab = crypto.agree(a_sk, b_pk, node_a=5, node_b=9, **kw)
    assert k_ab == crypto.agree(b_sk, a_pk, node_a=9, node_b=5, **kw)
    assert len(k_ab) == 32
    others = {
        crypto.agree(a_sk, b_pk, node_a=5, node_b=9, purpose=b"channel", run_id="r",
                     server_round=3),
        crypto.agree(a_sk, b_pk, node_a=5, node_b=9, purpose=b"mask", run_id="r2",
                     server_round=3),
        crypto.agree(a_sk, b_pk, node_a=5, node_b=9, purpose=b"mask", run_id="r",
                     server_round=4),
        crypto.agree(a_sk, b_pk, node_a=5, node_b=10, **kw),
    }
    assert k_ab not in others and len(others) == 4


def test_low_order_public_key_is_rejected() -> None:
    sk, _ = crypto.generate_keypair()
    with pytest.raises(ValueError):
        crypto.agree(sk, bytes(32), purpose=b"mask", run_id="r", server_round=1,
                     node_a=1, node_b=2)


def test_public_key_validation() -> None:
    assert crypto.is_valid_public_key(crypto.generate_keypair()[1])
    assert not crypto.is_valid_public_key(bytes(32))
    assert not crypto.is_valid_public_key(b"\x01" + bytes(31))  # order-1 point (u = 1)
    assert not crypto.is_valid_public_key(bytes(31))


def test_aead_detects_tampering_and_misdirection() -> None:
    key = bytes(range(32))
    aad = crypto.share_aad("r", 1, sender=4, receiver=7)
    blob = crypto.encrypt(key, b"share-bytes", aad)
    assert crypto.decrypt(key, blob, aad) == b"share-bytes"
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ValueError, match="failed authentication"):
        crypto.decrypt(key, flipped, aad)
    with pytest.raises(ValueError, match="failed authentication"):  # replay to another node
        crypto.decrypt(key, blob, crypto.share_aad("r", 1, sender=4, receiver=8))
    with pytest.raises(ValueError, match="too short"):
        crypto.decrypt(key, blob[:20], aad)


def test_mask_keystream_is_aes128_ctr_known_answer() -> None:
    # First keystream block = AES-128(0^128, 0^96 || 2): the ciphertext of GCM spec test
    # case 2 (McGrew & Viega: K = 0^128, IV = 0^96, P = 0^128)
    words = crypto.prg(bytes(32), 4)
    assert words.dtype == np.uint32
    assert words.tobytes().hex() == "0388dace60b6a392f328c2b971b2fe78"
    # ... and the whole mask is the AES-128-CTR keystream, keyed with the seed's first 16
    # bytes, from that counter block; the seed's last 16 bytes do not enter it
    key = bytes(range(32))
    assert np.array_equal(crypto.prg(key, 64), crypto.prg(key[:16] + bytes(16), 64))
    ctr = Cipher(algorithms.AES(key[:16]), modes.CTR(crypto.MASK_COUNTER_BLOCK)).encryptor()
    assert crypto.prg(key, 10_001).tobytes() == ctr.update(bytes(4 * 10_001))
    with pytest.raises(ValueError, match="mask length"):
        crypto.MaskGenerator(0)
    gen = crypto.MaskGenerator(1000)
    a = gen.mask(b"\x01" * 32).copy()
    assert np.array_equal(a, crypto.prg(b"\x01" * 32, 1000))
    assert not np.array_equal(a, gen.mask(b"\x02" * 32))


def test_commitment_binds_node_and_round() -> None:
    seed = bytes(32)
    c = crypto.commit(seed, "r", 1, 5)
    assert c != crypto.commit(seed, "r", 2, 5) and c != crypto.commit(seed, "r", 1, 6)
    assert len(c) == 32


def test_encrypt_many_is_encrypt_with_fresh_nonces() -> None:
    keys = [bytes([i]) * 32 for i in range(5)]
    pts = [f"share-{i}".encode() for i in range(5)]
    aads = [crypto.share_aad("r", 1, sender=4, receiver=10 + i) for i in range(5)]
    blobs = crypto.encrypt_many(keys, pts, aads)
    assert [crypto.decrypt(k, b, a) for k, b, a in zip(keys, blobs, aads, strict=True)] == pts
    assert len({b[: crypto.NONCE_BYTES] for b in blobs}) == 5
    with pytest.raises(ValueError, match="failed authentication"):  # bound to its own aad
        crypto.decrypt(keys[0], blobs[0], aads[1])
    with pytest.raises(ValueError, match="differ in length"):
        crypto.encrypt_many(keys, pts[:4], aads)

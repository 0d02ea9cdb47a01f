"""Shamir sharing over GF(2^521 - 1): every t-of-n subset reconstructs, fewer does not."""

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.privacy.secagg import shamir


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_every_t_of_n_subset_reconstructs(n: int) -> None:
    secret = os.urandom(32)
    xs = [7 * i + 3 for i in range(n)]
    for t in range(1, n + 1):
        shares = shamir.split(secret, xs, t)
        for size in range(t, n + 1):
            for subset in itertools.combinations(range(n), size):
                assert shamir.combine([xs[i] for i in subset], [shares[i] for i in subset]) \
                    == secret
        if t > 1:  # t - 1 shares give a different value (or an out-of-range one)
            for subset in itertools.combinations(range(n), t - 1):
                pts = [(xs[i], shamir.decode_share(shares[i])) for i in subset]
                assert shamir.interpolate(pts) != int.from_bytes(secret, "big")


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(1, 8), extra=st.integers(0, 4),
       base=st.integers(1, 2**64))
def test_roundtrip_property(secret: bytes, t: int, extra: int, base: int) -> None:
    xs = [base + i for i in range(t + extra)]
    shares = shamir.split(secret, xs, t)
    assert all(len(s) == shamir.SHARE_BYTES for s in shares)
    assert shamir.combine(xs[-t:], shares[-t:]) == secret


def test_altered_share_changes_result() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, [1, 2, 3], 3)
    # a small change moves the secret by a multiple of the Lagrange coefficient: detected
    # only by the protocol's commitments, but the result is never the secret
    bumped = (shamir.decode_share(shares[0]) + 1).to_bytes(shamir.SHARE_BYTES, "big")
    got = shamir.interpolate([(1, shamir.decode_share(bumped)),
                              (2, shamir.decode_share(shares[1])),
                              (3, shamir.decode_share(shares[2]))])
    assert got == (int.from_bytes(secret, "big") + 3) % shamir.PRIME  # lambda_1 = 3
    # a random share yields a field element far outside 32 bytes (prob 1 - 2^-265)
    forged = (int.from_bytes(os.urandom(64), "big") % shamir.PRIME).to_bytes(66, "big")
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.combine([1, 2, 3], [forged, shares[1], shares[2]])


def test_split_many_gives_each_secret_its_own_polynomial() -> None:
    xs, t = [1, 2, 3, 4, 5], 3
    a, b = os.urandom(32), os.urandom(32)
    shares_a, shares_b, shares_a2 = shamir.split_many([a, b, a], xs, t)
    for subset in itertools.combinations(range(len(xs)), t):
        pts = [xs[i] for i in subset]
        assert shamir.combine(pts, [shares_a[i] for i in subset]) == a
        assert shamir.combine(pts, [shares_b[i] for i in subset]) == b
        assert shamir.combine(pts, [shares_a2[i] for i in subset]) == a
    assert shares_a != shares_a2  # same secret, fresh randomness
    with pytest.raises(ValueError, match="expected 32 bytes, got 31"):
        shamir.split_many([a, bytes(31)], xs, t)


def test_input_validation_messages() -> None:
    with pytest.raises(ValueError, match="expected 32 bytes, got 31"):
        shamir.split(bytes(31), [1, 2], 2)
    with pytest.raises(ValueError, match=r"threshold: expected 1\.\.2, got 3"):
        shamir.split(bytes(32), [1, 2], 3)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(bytes(32), [1, 1], 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(bytes(32), [0, 1], 2)
    with pytest.raises(ValueError, match="expected 66 bytes, got 65"):
        shamir.decode_share(bytes(65))
    with pytest.raises(ValueError, match="not a field element"):
        shamir.decode_share(b"\xff" * 66)
    with pytest.raises(ValueError, match="duplicate"):
        s = shamir.split(bytes(32), [1, 2], 2)
        shamir.combine([1, 1], s)


def _shares_for(secrets_: list[bytes], t: int, pool: list[int], seed: int
                ) -> tuple[np.ndarray, list[list[int]]]:
    """For each secret, t shares at a random t-subset of ``pool`` (as combine_batch takes them)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for secret in secrets_:
        pts = sorted(rng.choice(pool, size=t, replace=False).tolist())
        xs.append(pts)
        ys.append([shamir.decode_share(s) for s in shamir.split(secret, pts, t)])
    return np.array(xs, dtype=np.int64), ys


@pytest.mark.parametrize(("t", "pool"), [(1, 5), (2, 3), (7, 13), (51, 1000), (60, 2**30)])
def test_combine_batch_recovers_every_secret(t: int, pool: int) -> None:
    secrets_ = [os.urandom(32) for _ in range(25)]
    xs, ys = _shares_for(secrets_, t, list(range(1, pool + 1)) if pool < 5000
                         else list(range(pool - 200, pool + 1)), seed=t)
    assert shamir.combine_batch(xs, ys) == secrets_
    # same answers as the one-secret path
    assert [shamir.combine(x, [y.to_bytes(shamir.SHARE_BYTES, "big") for y in row])
            for x, row in zip(xs.tolist(), ys, strict=True)] == secrets_


def test_combine_batch_flags_inconsistent_rows_only() -> None:
    secrets_ = [os.urandom(32) for _ in range(6)]
    xs, ys = _shares_for(secrets_, 5, list(range(1, 40)), seed=3)
    ys[2][1] = (ys[2][1] + 1) % shamir.PRIME  # one forged share
    got = shamir.combine_batch(xs, ys)
    assert got[2] is None  # lands outside the 32-byte range (probability 1 - 2^-265)
    assert [g for i, g in enumerate(got) if i != 2] == [s for i, s in enumerate(secrets_) if i != 2]


def test_combine_batch_large_points_fall_back_and_bad_points_raise() -> None:
    secrets_ = [os.urandom(32) for _ in range(3)]
    big = [2**40 + 17 * i for i in range(1, 12)]
    xs, ys = _shares_for(secrets_, 4, big, seed=4)
    assert shamir.combine_batch(xs, ys) == secrets_
    with pytest.raises(ValueError, match="duplicate"):
        shamir.combine_batch(np.array([[1, 1]]), [[5, 6]])
    with pytest.raises(ValueError, match="evaluation points"):
        shamir.combine_batch(np.array([[0, 1]]), [[5, 6]])
    with pytest.raises(ValueError, match="shape"):
        shamir.combine_batch(np.array([[1, 2]]), [[5]])
    assert shamir.combine_batch(np.zeros((0, 3), np.int64), []) == []


@pytest.mark.parametrize("xs", [[1, 2, 9, 40], [2**70 + 1, 3, 2**64 + 9, 5]])
def test_split_evaluates_the_polynomial_with_or_without_lazy_reduction(
    xs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # small points reduce once at the end, large ones at every Horner step: both must
    # equal the polynomial evaluated directly
    coeffs = [shamir.PRIME - 1 - i for i in range(4)]
    monkeypatch.setattr(shamir, "_random_elements", lambda count: coeffs[1:count + 1])
    secret = bytes(range(32))
    shares = shamir.split(secret, xs, 4)
    c = [int.from_bytes(secret, "big"), *coeffs[1:]]
    want = [sum(ci * pow(x, i, shamir.PRIME) for i, ci in enumerate(c)) % shamir.PRIME
            for x in xs]
    assert [shamir.decode_share(s) for s in shares] == want


def test_random_elements_redraw_the_one_value_outside_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 521 one-bits is p itself, not a field element: it must be redrawn, not kept
    monkeypatch.setattr(shamir.os, "urandom", lambda n: b"\xff" * n)
    monkeypatch.setattr(shamir.secrets, "randbelow", lambda p: 12345)
    assert shamir._random_elements(3) == [12345] * 3

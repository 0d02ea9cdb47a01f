"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Field choice: p = 2^521 - 1 is a Mersenne prime, so every 32-byte secret (X25519
private key, mask seed) is one field element: no chunking, no padding, no
share-per-chunk overhead. Arithmetic uses Python's arbitrary-precision integers
(implemented in C). The protocol shares each secret to only k + 1 = O(log n)
holders with threshold t, so a site does O(k * t) multiplications. Coefficients come
from the OS CSPRNG (`os.urandom`, `secrets`).

The server reconstructs up to n secrets per round. Lagrange interpolation is O(t^2)
per secret, and done with 521-bit Python integers that is ~1.3 ms at t = 51 (1.3 s
for n = 1000). `combine_batch` moves the O(t^2) part to numpy: with small evaluation
points (the protocol uses each holder's rank among the round's participants, <= n),
every Lagrange denominator is an exact product of small integers, computed in int64
chunks, so only O(t) big-integer operations per secret remain.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence

import numpy as np

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[bytes]:
    """Split ``secret`` into one share per evaluation point.

    Parameters
    ----------
    secret:
        The 32-byte secret.
    xs:
        Distinct non-zero evaluation points (the holders' x-coordinates), each < PRIME.
    threshold:
        Number of shares needed to reconstruct (polynomial degree + 1), 1 <= t <= len(xs).

    Returns the shares as ``SHARE_BYTES``-byte big-endian field elements, in ``xs`` order.
    """
    return split_many([secret], xs, threshold)[0]


def split_many(values: Sequence[bytes], xs: Sequence[int], threshold: int) -> list[list[bytes]]:
    """`split` of several secrets to the same holders (a site shares two per round): the
    checks and the randomness read are done once. Each secret gets its own independent
    random polynomial."""
    for secret in values:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"shamir.secret: expected {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"shamir.threshold: expected 1..{len(xs)}, got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("shamir.xs: expected distinct evaluation points in [1, p)")
    rand = _random_elements(len(values) * (threshold - 1))
    # Horner without a reduction per step while the points are small (the protocol's are
    # ranks <= n): each step then adds only log2(x) bits to a 521-bit number, so one
    # reduction at the end replaces t - 1 big-integer divisions per share.
    lazy = max(xs).bit_length() <= 64
    out = []
    for i, secret in enumerate(values):
        coeffs = [int.from_bytes(secret, "big"), *rand[i * (threshold - 1):(i + 1) * (threshold - 1)]]
        coeffs.reverse()
        shares = []
        for x in xs:
            acc = 0
            for c in coeffs:
                acc = acc * x + c if lazy else (acc * x + c) % PRIME
            shares.append((acc % PRIME).to_bytes(SHARE_BYTES, "big"))
        out.append(shares)
    return out


def _random_elements(count: int) -> list[int]:
    """``count`` uniform field elements from the OS CSPRNG (one read for all of them).

    Each element is 521 random bits, i.e. uniform in [0, 2^521 - 1] = [0, p]; the single
    value p is rejected and redrawn (probability 2^-521), as `secrets.randbelow` does.
    """
    raw = os.urandom(SHARE_BYTES * count)
    out = [int.from_bytes(raw[i:i + SHARE_BYTES], "big") & PRIME
           for i in range(0, len(raw), SHARE_BYTES)]
    return [v if v != PRIME else secrets.randbelow(PRIME) for v in out]


def decode_share(share: bytes) -> int:
    """Parse one share; raises ValueError if it is not a field element of the right size."""
    if len(share) != SHARE_BYTES:
        raise ValueError(f"shamir.share: expected {SHARE_BYTES} bytes, got {len(share)}")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise ValueError("shamir.share: value is not a field element (>= p)")
    return y


def decode_shares(shares: Sequence[bytes]) -> list[int]:
    """`decode_share` for a list (one pass of checks); raises ValueError if any is malformed."""
    if any(not isinstance(s, bytes) or len(s) != SHARE_BYTES for s in shares):
        raise ValueError(f"shamir.share: expected {SHARE_BYTES} bytes each")
    ys = [int.from_bytes(s, "big") for s in shares]
    if ys and max(ys) >= PRIME:
        raise ValueError("shamir.share: value is not a field element (>= p)")
    return ys


def interpolate(points: Sequence[tuple[int, int]], at: int = 0) -> int:
    """Value at ``at`` of the polynomial through ``points`` ((x, y) field elements).

    Lagrange interpolation with a single modular inversion (batched denominators).
    """
    xs = [x for x, _ in points]
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inv = pow(prefix[-1], -1, PRIME)  # 1 / (d_0 ... d_{t-1})
    total = 0
    for i in range(len(xs) - 1, -1, -1):
        inv_i = inv * prefix[i] % PRIME  # 1 / d_i
        inv = inv * dens[i] % PRIME  # 1 / (d_0 ... d_{i-1})
        total = (total + points[i][1] * nums[i] * inv_i) % PRIME
    return total


def combine(xs: Sequence[int], shares: Sequence[bytes]) -> bytes:
    """Reconstruct a 32-byte secret from shares at distinct points ``xs``.

    Exactly ``threshold`` shares must be passed (more is fine if they are consistent).
    Raises ValueError on malformed shares, duplicate points, or a result that is not a
    32-byte value (which proves the shares are inconsistent).
    """
    if len(xs) != len(shares) or not xs:
        raise ValueError("shamir.combine: expected as many points as shares, at least one")
    if len(set(xs)) != len(xs):
        raise ValueError("shamir.combine: duplicate evaluation points")
    secret = interpolate([(x, decode_share(s)) for x, s in zip(xs, shares, strict=True)])
    if secret >> (8 * SECRET_BYTES):
        raise ValueError("shamir.combine: shares are inconsistent (secret out of range)")
    return secret.to_bytes(SECRET_BYTES, "big")


_BATCH_CELLS = 1 << 21  # int64 cells of one (rows x t x t) difference block (16 MiB)


def combine_batch(xs: np.ndarray, ys: Sequence[Sequence[int]]) -> list[bytes | None]:
    """Reconstruct many secrets at once, each from exactly t shares.

    Parameters
    ----------
    xs:
        int array (m, t): row r holds the distinct non-zero evaluation points of secret r's
        shares. Points must be below 2^31 (the protocol's points are ranks <= n); larger
        points fall back to `interpolate` row by row.
    ys:
        m rows of t decoded shares (field elements, e.g. from `decode_share`), in ``xs`` order.

    Returns one entry per row: the 32-byte secret, or None if the shares are inconsistent
    (the interpolated value is not a 32-byte number), as `combine` would raise for.
    """
    xs = np.asarray(xs, dtype=np.int64)
    if xs.ndim != 2 or xs.shape[0] != len(ys) or any(len(y) != xs.shape[1] for y in ys):
        raise ValueError("shamir.combine_batch: expected xs of shape (m, t) and m rows of t shares")
    m, t = xs.shape
    if m == 0:
        return []
    if t == 0 or xs.min() < 1 or xs.max() >= 1 << 31:
        if t == 0 or xs.min() < 1:
            raise ValueError("shamir.combine_batch: evaluation points must be in [1, p)")
        return [_checked(interpolate(list(zip(row, y, strict=True))))
                for row, y in zip(xs.tolist(), ys, strict=True)]
    srt = np.sort(xs, axis=1)
    if np.any(srt[:, 1:] == srt[:, :-1]):
        raise ValueError("shamir.combine_batch: duplicate evaluation points in a row")
    out: list[bytes | None] = []
    step = max(1, _BATCH_CELLS // (t * t))
    for a in range(0, m, step):
        out += _combine_block(xs[a:a + step], ys[a:a + step])
    return out


def _exact_row_products(v: np.ndarray) -> list[list[int]]:
    """Exact products along the last axis of an int64 array (..., t) as Python ints.

    Factors are multiplied in int64 groups small enough never to overflow, then the
    group products are multiplied as Python integers (arbitrary precision).
    """
    bits = max(int(np.abs(v).max()).bit_length(), 1)
    per = max(1, 62 // bits)  # |product of `per` factors| < 2^62
    t = v.shape[-1]
    pad = -t % per
    if pad:
        v = np.concatenate([v, np.ones((*v.shape[:-1], pad), np.int64)], axis=-1)
    groups = v.reshape(*v.shape[:-1], -1, per).prod(axis=-1)
    return [[math.prod(g) for g in row] for row in groups.reshape(-1, *groups.shape[-2:]).tolist()]


def _combine_block(xs: np.ndarray, ys: Sequence[Sequence[int]]) -> list[bytes | None]:
    m, t = xs.shape
    # secret = sum_i y_i * l_i with l_i = prod_{j != i} x_j / (x_j - x_i)
    #        = P * sum_i y_i / w_i, P = prod_j x_j, w_i = x_i * prod_{j != i} (x_j - x_i).
    diff = xs[:, None, :] - xs[:, :, None]  # diff[r, i, j] = x_j - x_i
    idx = np.arange(t)
    diff[:, idx, idx] = xs  # the diagonal carries the x_i factor of w_i
    w = _exact_row_products(diff)  # m rows of t exact integers
    p_rows = _exact_row_products(xs[:, None, :])
    # One modular inversion for all m * t denominators (Montgomery's trick). Products are
    # reduced lazily with the Mersenne identity 2^521 = 1 (mod p): (z & p) + (z >> 521)
    # is congruent to z and below 2^523, half the cost of `%`; the final values are
    # reduced exactly below.
    flat = [wi % PRIME for row in w for wi in row]
    prefix = [1] * (len(flat) + 1)
    acc = 1
    for i, v in enumerate(flat):
        acc *= v
        acc = (acc & PRIME) + (acc >> 521)
        prefix[i + 1] = acc
    inv = pow(acc % PRIME, -1, PRIME)
    invs = [0] * len(flat)
    for i in range(len(flat) - 1, -1, -1):
        z = inv * prefix[i]
        invs[i] = (z & PRIME) + (z >> 521)
        inv *= flat[i]
        inv = (inv & PRIME) + (inv >> 521)
    out: list[bytes | None] = []
    for r in range(m):
        total = sum(y * v for y, v in zip(ys[r], invs[r * t:(r + 1) * t], strict=True))
        out.append(_checked(total % PRIME * p_rows[r][0] % PRIME))
    return out


def _checked(secret: int) -> bytes | None:
    """The 32-byte encoding of an interpolated secret, None if it cannot be one."""
    return None if secret >> (8 * SECRET_BYTES) else secret.to_bytes(SECRET_BYTES, "big")

"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Field choice: p = 2^521 - 1 is a Mersenne prime, so every 32-byte secret (X25519
private key, mask seed) is one field element: no chunking, no padding, no
share-per-chunk overhead. Arithmetic uses Python's arbitrary-precision integers
(implemented in C). The protocol shares each secret to only k + 1 = O(log n)
holders with threshold t, so a site does O(k * t) multiplications and the server
O(t^2) per reconstructed secret: microseconds, which is why numpy batching (and
its 64-bit limit) is not needed here. Coefficients come from `secrets` (OS CSPRNG).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

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
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"shamir.secret: expected {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"shamir.threshold: expected 1..{len(xs)}, got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("shamir.xs: expected distinct evaluation points in [1, p)")
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out.append(acc.to_bytes(SHARE_BYTES, "big"))
    return out


def decode_share(share: bytes) -> int:
    """Parse one share; raises ValueError if it is not a field element of the right size."""
    if len(share) != SHARE_BYTES:
        raise ValueError(f"shamir.share: expected {SHARE_BYTES} bytes, got {len(share)}")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise ValueError("shamir.share: value is not a field element (>= p)")
    return y


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

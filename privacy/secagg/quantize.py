"""Fixed-point quantisation into the uint32 ring with unbiased stochastic rounding.

A value x is clipped to [-c, c] and mapped to ``(x + c) * s`` with
``s = (2**bits - 1) / (2c)``, then rounded down or up at random with the probability
that makes the rounding unbiased. The sum of m quantised vectors is dequantised as
``S / s - m * c``; each coordinate is off by less than ``m / s`` (the stated bound,
`error_bound`) provided no input coordinate was clipped.
"""

from __future__ import annotations

import numpy as np

from .config import RING_BITS


def scale(clip_range: float, bits: int) -> float:
    """Quantisation levels per unit: (2**bits - 1) / (2 * clip_range)."""
    return ((1 << bits) - 1) / (2.0 * clip_range)


def check_no_overflow(n: int, bits: int, extra: int = 0) -> None:
    """Refuse configurations where a sum of ``n`` quantised values could wrap 2^32.

    Parameters
    ----------
    n:
        Number of summed vectors (participants).
    bits:
        Quantisation bits; each value is at most ``2**bits - 1``.
    extra:
        Additional per-site headroom per coordinate (0 for data coordinates).
    """
    top = n * ((1 << bits) - 1 + extra)
    if top >= 1 << RING_BITS:
        max_bits = (((1 << RING_BITS) - 1) // n - extra + 1).bit_length() - 1
        raise ValueError(
            f"secagg.bits: {n} sites x (2^{bits} - 1) = {top} wraps the 2^{RING_BITS} ring; "
            f"use bits <= {max(max_bits, 0)} or fewer sites"
        )


def quantize(
    x: np.ndarray, clip_range: float, bits: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Quantise a float vector to uint32 levels in [0, 2**bits - 1].

    Parameters
    ----------
    x:
        Float vector (any float dtype; computed in float64).
    clip_range:
        c; values are clipped to [-c, c].
    bits:
        Number of quantisation bits.
    rng:
        Source of the rounding noise.
    Returns (levels as uint32, number of clipped coordinates).
    """
    s = scale(clip_range, bits)
    xf = np.asarray(x, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(xf) > clip_range))
    y = (np.clip(xf, -clip_range, clip_range) + clip_range) * s
    q = np.floor(y + rng.random(y.shape))
    np.minimum(q, (1 << bits) - 1, out=q)
    return q.astype(np.uint32), clipped


def dequantize_sum(total: np.ndarray, m: int, clip_range: float, bits: int) -> np.ndarray:
    """Float64 estimate of the sum of the m original vectors from the sum of their levels."""
    return total.astype(np.float64) / scale(clip_range, bits) - m * clip_range


def error_bound(m: int, clip_range: float, bits: int) -> float:
    """Per-coordinate bound on |dequantised sum - true sum| for m unclipped vectors."""
    return m / scale(clip_range, bits)

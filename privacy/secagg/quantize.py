"""Fixed-point quantisation into the uint32 ring with unbiased stochastic rounding.

A value x is clipped to [-c, c] and mapped to ``(x + c) * s`` with
``s = (2**bits - 1) / (2c)``, then rounded down or up at random with the probability
that makes the rounding unbiased. The sum of m quantised vectors is dequantised as
``S / s - m * c``; each coordinate is off by less than ``m / s`` (the stated bound,
`error_bound`) provided no input coordinate was clipped.
"""

from __future__ import annotations

import threading

import numpy as np

from .config import RING_BITS

_RANDOM_BLOCK = 8192  # uniforms drawn per block: 64 KiB, reused, stays in cache
_tls = threading.local()


def scratch(n: int) -> np.ndarray:
    """A float64 work array of length ``n`` reused by this thread (contents undefined).

    A site quantises one d-vector per round; fresh multi-megabyte temporaries cost a page
    fault per 4 KiB page (hundreds per call, expensive in a VM), reused memory does not.
    The array is overwritten by the next call in the same thread.
    """
    buf = getattr(_tls, "buf", None)
    if buf is None or buf.size < n:
        buf = _tls.buf = np.empty(n, dtype=np.float64)
    return buf[:n]


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
    x: np.ndarray, clip_range: float, bits: int, rng: np.random.Generator,
    out: np.ndarray | None = None, inplace: bool = False,
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
    out:
        Optional uint32 array of x's shape to write the levels into (saves a copy when
        the caller assembles a longer vector).
    inplace:
        ``x`` is a float64 work array the caller no longer needs: use it as scratch.
    Returns (levels as uint32, number of clipped coordinates).
    """
    s = scale(clip_range, bits)
    xf = np.asarray(x, dtype=np.float64)
    n = xf.size
    clipped = int(np.count_nonzero(xf > clip_range)) + int(np.count_nonzero(xf < -clip_range))
    y = xf if inplace and xf is x else scratch(n).reshape(xf.shape)
    np.clip(xf, -clip_range, clip_range, out=y)
    # (clip(x) + c) * s plus U[0, 1): truncating this non-negative value rounds down or
    # up with the unbiased probability. In-place passes: this runs once per site and round.
    y *= s
    y += clip_range * s
    flat = y.reshape(-1)
    u = np.empty(min(n, _RANDOM_BLOCK), dtype=np.float64)
    for a in range(0, n, _RANDOM_BLOCK):
        blk = u[: min(_RANDOM_BLOCK, n - a)]
        rng.random(out=blk)
        flat[a:a + blk.size] += blk
    if out is None:
        out = np.empty(y.shape, dtype=np.uint32)
    np.copyto(out, y, casting="unsafe")  # truncation = floor for values >= 0
    # (c + c) * s can exceed 2**bits - 1 by an ulp, and adding u < 1 then round up to 2**bits
    np.minimum(out, (1 << bits) - 1, out=out)
    return out, clipped


def dequantize_sum(total: np.ndarray, m: int, clip_range: float, bits: int) -> np.ndarray:
    """Float64 estimate of the sum of the m original vectors from the sum of their levels."""
    return total.astype(np.float64) / scale(clip_range, bits) - m * clip_range


def error_bound(m: int, clip_range: float, bits: int) -> float:
    """Per-coordinate bound on |dequantised sum - true sum| for m unclipped vectors."""
    return m / scale(clip_range, bits)

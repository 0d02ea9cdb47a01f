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


def scale_into(x: np.ndarray, factor: float, out: np.ndarray) -> tuple[float, float] | None:
    """Write ``x * factor`` into ``out``; return its exact (min, max), or None if x has a
    NaN or an infinity.

    Two reductions over ``x`` replace a finiteness pass and, later, the min/max pass of
    `quantize` over ``out`` (pass them as its ``bounds``): min and max propagate NaN and
    show +-inf, and because rounding is monotonic and ``factor >= 0``, the same ufunc
    applied to x's two extremes gives exactly out's extremes.

    Parameters
    ----------
    x:
        Float vector (a site's update).
    factor:
        Non-negative scale (the site's weight fraction).
    out:
        float64 array of x's shape.
    """
    lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    np.multiply(x, factor, out=out)
    ends = np.multiply(np.array([lo, hi], dtype=x.dtype), factor, out=np.empty(2))
    return float(ends[0]), float(ends[1])


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


def noise_bits(bits: int) -> int:
    """Fractional bits F of the rounding noise for ``bits``-bit levels: min(32, 52 - bits).

    Levels scaled by 2^F stay at most 2^52, so a float64 holds them plus a noise word
    of F bits to within half a unit (see `quantize`).
    """
    return min(32, 52 - bits)


def quantize(
    x: np.ndarray, clip_range: float, bits: int, rng: np.random.Generator | np.ndarray,
    out: np.ndarray | None = None, inplace: bool = False,
    bounds: tuple[float, float] | None = None,
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
        Source of the rounding noise: a numpy Generator (words are drawn from it), or
        at least ``x.size`` uniformly random uint32 words (a site passes an AES-CTR
        keystream under a fresh random key: 5x faster than numpy's generator and from a
        CSPRNG). Only the top `noise_bits` bits of each word are used.
    out:
        Optional uint32 array of x's shape to write the levels into (saves a copy when
        the caller assembles a longer vector).
    inplace:
        ``x`` is a float64 work array the caller no longer needs: use it as scratch.
    bounds:
        ``(x.min(), x.max())`` exactly, if the caller already has them (saves two passes;
        wrong bounds break the clipping and overflow guards).
    Returns (levels as uint32, number of clipped coordinates).

    Rounding is fixed-point: with v = (clip(x) + c) * s and F = `noise_bits` (bits),
    ``floor((v * 2^F + r) / 2^F)`` with r uniform in [0, 2^F). Scaling by 2^F is exact and
    v * 2^F + r < 2^53, so the float64 sum is off by at most half a unit: v is rounded up
    with probability frac(v) to within 2^-F (unbiased to that resolution; 2^-32 levels
    at the default 20 bits), and the result is always floor(v) or floor(v) + 1.
    """
    s = scale(clip_range, bits)
    xf = np.asarray(x, dtype=np.float64)
    n = xf.size
    if isinstance(rng, np.random.Generator):
        words = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    else:
        words = np.asarray(rng).reshape(-1)
        if words.dtype != np.uint32 or words.size < n:
            raise ValueError(f"quantize: rng must be a Generator or >= {n} uint32 words, got "
                             f"{words.dtype} ({words.size})")
        words = words[:n]
    y = xf if inplace and xf is x else scratch(n).reshape(xf.shape)
    flat = y.reshape(-1)
    # One pass each; the clipping passes run only when some value is out of range
    # (two reductions are cheaper than two comparisons into boolean temporaries).
    clipped = 0
    hi = np.float64(clip_range)
    if n:
        lo, hi = bounds if bounds is not None else (xf.min(), xf.max())
    if n and (lo < -clip_range or hi > clip_range):
        clipped = int(np.count_nonzero(xf > clip_range)) + \
            int(np.count_nonzero(xf < -clip_range))
        np.clip(xf, -clip_range, clip_range, out=y)
        hi = min(hi, np.float64(clip_range))
    elif y is not xf:
        np.copyto(y, xf)
    f = noise_bits(bits)
    sf = s * float(1 << f)  # exact: a power-of-two factor commutes with rounding
    offset = clip_range * sf
    y *= sf
    y += offset  # V = (clip(x) + c) * s * 2^F
    if f < 32:
        flat += words >> np.uint32(32 - f)  # top F bits: uniform in [0, 2^F)
    else:
        flat += words
    y *= 1.0 / float(1 << f)
    if out is None:
        out = np.empty(y.shape, dtype=np.uint32)
    # truncation = floor for values >= 0. Every level is in [0, 2**bits] (see below), so
    # for bits <= 30 it fits an int32 with the same bits, and numpy's float64 -> int32
    # cast is vectorised where its float64 -> uint32 one is not (about 2x faster here).
    np.copyto(out.view(np.int32) if bits <= 30 else out, y, casting="unsafe")
    # (c + c) * s can exceed 2**bits - 1 by an ulp, and adding the noise then reach 2**bits.
    # The largest V is the same float operations on the largest input (they are monotonic);
    # if it is at most (2**bits - 1) * 2^F, V + r < 2**bits * 2^F and no level can overflow.
    if hi * sf + offset > float(((1 << bits) - 1) << f):
        np.minimum(out, (1 << bits) - 1, out=out)
    return out, clipped


def dequantize_sum(total: np.ndarray, m: int, clip_range: float, bits: int) -> np.ndarray:
    """Float64 estimate of the sum of the m original vectors from the sum of their levels."""
    return total.astype(np.float64) / scale(clip_range, bits) - m * clip_range


def error_bound(m: int, clip_range: float, bits: int) -> float:
    """Per-coordinate bound on |dequantised sum - true sum| for m unclipped vectors."""
    return m / scale(clip_range, bits)

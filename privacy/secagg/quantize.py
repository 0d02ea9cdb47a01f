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


def noise_bits(bits: int) -> int:
    """Fractional bits F of the rounding noise for ``bits``-bit levels: min(32, 52 - bits).

    Levels scaled by 2^F stay at most 2^52, so a float64 holds them plus a noise word
    of F bits to within half a unit (see `quantize`).
    """
    return min(32, 52 - bits)


def quantize(
    x: np.ndarray, clip_range: float, bits: int, rng: np.random.Generator | np.ndarray,
    out: np.ndarray | None = None, *, factor: float = 1.0,
) -> tuple[np.ndarray, int]:
    """Quantise ``factor * x`` to uint32 levels in [0, 2**bits - 1].

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
        Optional contiguous uint32 array of x's shape to write the levels into (saves a
        copy when the caller assembles a longer vector).
    factor:
        Non-negative scale applied to every value before clipping (a site's weight
        fraction ``w / W``), in float64.
    Returns (levels as uint32, number of clipped coordinates). Raises ValueError if a
    value of ``factor * x`` is NaN or infinite.

    Rounding is fixed-point: with v = (clip(factor * x) + c) * s and F = `noise_bits`
    (bits), ``floor((v * 2^F + r) / 2^F)`` with r uniform in [0, 2^F). Scaling by 2^F is
    exact and v * 2^F + r < 2^53, so the float64 sum is off by at most half a unit: v is
    rounded up with probability frac(v) to within 2^-F (unbiased to that resolution;
    2^-32 levels at the default 20 bits), and the result is floor(v) or floor(v) + 1,
    capped at 2**bits - 1 ((c + c) * s can exceed 2**bits - 1 by an ulp). One compiled
    pass (`kernels.quantize_into`) does all of it, the finiteness check included.
    """
    from .kernels import quantize_into  # numba: imported on first use

    xf = np.asarray(x)
    if xf.dtype not in (np.float32, np.float64):  # the compiled loop's two input types
        xf = xf.astype(np.float64)
    flat = np.ascontiguousarray(xf).reshape(-1)
    n = flat.size
    if isinstance(rng, np.random.Generator):
        words = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    else:
        words = np.asarray(rng).reshape(-1)
        if words.dtype != np.uint32 or words.size < n:
            raise ValueError(f"quantize: rng must be a Generator or >= {n} uint32 words, got "
                             f"{words.dtype} ({words.size})")
        words = np.ascontiguousarray(words[:n])
    if out is None:
        out = np.empty(xf.shape, dtype=np.uint32)
    elif out.dtype != np.uint32 or out.size != n or not out.flags.c_contiguous:
        raise ValueError(f"quantize: out must be a contiguous uint32 array of {n} values, got "
                         f"{out.dtype} {out.shape}")
    f = noise_bits(bits)
    sf = scale(clip_range, bits) * float(1 << f)  # exact: a power-of-two factor
    clipped, bad = quantize_into(flat, float(factor), float(clip_range), sf, clip_range * sf,
                                 1.0 / float(1 << f), np.uint32(32 - f),
                                 np.int64((1 << bits) - 1), words, out.reshape(-1))
    if bad:
        raise ValueError(f"quantize: {bad} values are NaN or infinite")
    return out, int(clipped)


def dequantize_sum(total: np.ndarray, m: int, clip_range: float, bits: int) -> np.ndarray:
    """Float64 estimate of the sum of the m original vectors from the sum of their levels."""
    return total.astype(np.float64) / scale(clip_range, bits) - m * clip_range


def error_bound(m: int, clip_range: float, bits: int) -> float:
    """Per-coordinate bound on |dequantised sum - true sum| for m unclipped vectors."""
    return m / scale(clip_range, bits)

"""Single-pass loops of a site's masked stage, compiled with numba.

A site's masked input is its quantised update plus k + 1 keystreams of d words. In
numpy, quantisation is a chain of whole-array operations (scale, clip, shift, add the
rounding noise, scale back, cast), each a pass over a d-long float64 temporary, and
every keystream is one more pass that reads and writes the whole vector. These loops
read each input once and keep the intermediate values in registers:

- `quantize_into`: clip, scale, stochastic rounding and the finiteness check in one
  pass over the update and the noise words;
- `add_two`: two keystreams added (or subtracted) in one pass over the accumulator.

The arithmetic is the same IEEE float64 operations, in the same order, as the formulas
in `fedsilo.privacy.secagg.quantize` (no fast-math: no reassociation or contraction),
and uint32 wrap-around for the masks, so the results are exactly those of the numpy
expressions (tests compare them). Nothing here validates; callers check shapes and
dtypes once at the boundary (`quantize`, `MaskGenerator.add_masks`).

The module imports numba, so it is imported on first use only: a ClientApp that never
runs a secure round does not pay for it.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def quantize_into(x, factor, clip, sf, offset, inv, shift, top, noise, out):  # pragma: no cover
    """``out[j]`` = level of ``x[j] * factor``; returns (clipped count, non-finite count).

    Level: ``min(trunc(((clip(v) * sf + offset) + (noise[j] >> shift)) * inv), top)``
    with ``v = float64(x[j]) * factor`` clipped to ``[-clip, clip]``. A non-finite ``v``
    is counted (its level is meaningless: the caller refuses the vector).
    """
    clipped = 0
    bad = 0
    for j in range(x.size):
        v = np.float64(x[j]) * factor
        bad += v - v != 0.0  # NaN or +-inf (inf - inf is NaN)
        c = min(max(v, -clip), clip)
        clipped += c != v
        w = c * sf
        w = w + offset
        w = w + np.float64(noise[j] >> shift)
        w = w * inv
        out[j] = np.uint32(min(np.int64(w), top))
    return clipped, bad


@njit(nogil=True, cache=True)
def add_two(acc, a, b, neg_a, neg_b):  # pragma: no cover
    """``acc += (-1)^neg_a * a + (-1)^neg_b * b`` in the uint32 ring, one pass."""
    if neg_a and neg_b:
        for j in range(acc.size):
            acc[j] = acc[j] - a[j] - b[j]
    elif neg_a:
        for j in range(acc.size):
            acc[j] = acc[j] - a[j] + b[j]
    elif neg_b:
        for j in range(acc.size):
            acc[j] = acc[j] + a[j] - b[j]
    else:
        for j in range(acc.size):
            acc[j] = acc[j] + a[j] + b[j]

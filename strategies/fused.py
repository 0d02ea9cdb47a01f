"""Optional compiled (numba) twins of the row-streaming kernels in `kernels`.

Nothing imports this module unless `kernels.use_accelerator("numba")` (or
``FEDSILO_KERNELS=numba``) asked for it: the numpy kernels are the reference and the
default, and a default run compiles nothing. Tests check these equal to them.

The weighted mean needs, for every reply, its squared norm (screening: finiteness and
the absurd-norm bound) and its contribution ``w_i * x_i`` to the sum. Two numpy/BLAS
calls per row (``dot`` then ``axpy``) read every row twice; a compiled loop reads each
value once, squares it and adds it to the accumulator while it is in a register, so
the server step runs at the speed of one pass over the bytes (the bandwidth baseline).

The rows stay where they are (zero-copy views of the reply messages' bytes): the kernel
walks a list of them, never stacks them. It sweeps four rows at a time, so the
accumulator is read and written once per four rows, and in column blocks of ``_BLOCK``
values so that the accumulator stays in cache when d is large; the squared norms are
summed in float32 over chunks of ``_CHUNK`` values (spread over the SIMD lanes, so the
rounding error stays near 1e-7 relative) and in float64 across chunks.

Nothing here validates: callers pass 1-D float32 vectors of one length and one float64
coefficient per row (`screen_and_sum` checks the shapes once at the boundary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, uint64
from numba.typed import List

_BLOCK = 1 << 18  # accumulator block: 1 MiB of float32, stays in L2/L3 while all rows pass
_CHUNK = 1 << 14  # float32 partial sums of squares over this many values, then float64

# reassoc lets LLVM vectorise the reductions; no 'nnan'/'ninf': NaN and Inf must propagate
# into the squared norm, which is how screening sees them.
_FASTMATH = {"reassoc", "contract"}


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _sq_chunk(x):  # pragma: no cover - compiled
    part = np.float32(0.0)
    for j in range(x.size):
        part += x[j] * x[j]
    return part


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _sq_axpy_chunk(x, acc, c):  # pragma: no cover - compiled
    part = np.float32(0.0)
    for j in range(x.size):
        v = x[j]
        part += v * v
        acc[j] += c * v
    return part


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _sq_axpy4_chunk(x0, x1, x2, x3, acc, c0, c1, c2, c3, sq, i):  # pragma: no cover
    # four rows per sweep: the accumulator is loaded and stored once for four rows,
    # so the loop is bound by reading the rows, like the one-pass baseline
    p0 = np.float32(0.0)
    p1 = np.float32(0.0)
    p2 = np.float32(0.0)
    p3 = np.float32(0.0)
    for j in range(acc.size):
        a, b, c, e = x0[j], x1[j], x2[j], x3[j]
        p0 += a * a
        p1 += b * b
        p2 += c * c
        p3 += e * e
        acc[j] += c0 * a + c1 * b + c2 * c + c3 * e
    sq[i] += p0
    sq[i + 1] += p1
    sq[i + 2] += p2
    sq[i + 3] += p3


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _screen_and_sum(rows, coeffs, acc, sq, d, accumulate):  # pragma: no cover - compiled
    n = len(rows)
    c = coeffs.astype(np.float32)
    for start in range(0, d, _BLOCK):
        stop = min(start + _BLOCK, d)
        i = 0
        while accumulate and i + 4 <= n:
            r0, r1, r2, r3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
            for s in range(start, stop, _CHUNK):
                e = min(s + _CHUNK, stop)
                _sq_axpy4_chunk(r0[s:e], r1[s:e], r2[s:e], r3[s:e], acc[s:e],
                                c[i], c[i + 1], c[i + 2], c[i + 3], sq, i)
            i += 4
        while i < n:
            row = rows[i]
            total = 0.0
            for s in range(start, stop, _CHUNK):
                e = min(s + _CHUNK, stop)
                if accumulate:
                    total += _sq_axpy_chunk(row[s:e], acc[s:e], c[i])
                else:
                    total += _sq_chunk(row[s:e])
            sq[i] += total
            i += 1


def common_length(rows: Sequence[np.ndarray], caller: str) -> int:
    """The common length of the rows; ValueError unless all are 1-D float32 of that length."""
    d = int(rows[0].size)
    for row in rows:
        if row.dtype != np.float32 or row.ndim != 1 or row.size != d:
            raise ValueError(f"{caller}: rows must be 1-D float32 vectors of {d} values, got "
                             f"{row.dtype} {row.shape}")
    return d


_F32_MAX = float(np.finfo(np.float32).max)


def check_float32_coefficients(coeffs: np.ndarray, caller: str) -> None:
    """ValueError unless every coefficient is finite and fits float32.

    The kernels multiply in float32: a coefficient beyond float32's range (a raw example
    count of 1e39) would become Inf there and the sum NaN. Callers pass normalised
    weights (`batch.mean_coefficients`, `kernels.normalized`).
    """
    if coeffs.size and not bool(np.all(np.abs(coeffs) <= _F32_MAX)):  # False for NaN too
        bad = coeffs[~(np.abs(coeffs) <= _F32_MAX)][0]
        raise ValueError(f"{caller}: coefficient {bad!r} is not a finite float32 value; "
                         "normalise the weights first")


def as_numba_list(rows: Sequence[np.ndarray]) -> List:
    # numba types a list by its element type: read-only views (message bytes) and
    # writable arrays are different types, so present them all as read-only views
    out = List()
    for row in rows:
        view = row.view()
        view.setflags(write=False)
        out.append(view)
    return out


def screen_and_sum(
    rows: Sequence[np.ndarray], coeffs: np.ndarray | None = None, *, dim: int | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Squared L2 norms of the rows and, optionally, ``sum_i coeffs[i] * rows[i]``, in one pass.

    Parameters
    ----------
    rows : 1-D float32 vectors of equal length (left untouched: views of message
        bytes are fine).
    coeffs : one coefficient per row; None computes the norms only.
    dim : the length of every row (needed when ``rows`` is empty).

    Returns ``(total, sq_norms)``: the float32 weighted sum (None without ``coeffs``) and
    the float64 squared norms (NaN or Inf where a row holds non-finite values or
    overflows float32 when squared).
    """
    n = len(rows)
    d = common_length(rows, "screen_and_sum") if n else int(dim or 0)
    accumulate = coeffs is not None
    c = np.zeros(n) if coeffs is None else np.ascontiguousarray(coeffs, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"screen_and_sum: {c.size} coefficients for {n} rows")
    check_float32_coefficients(c, "screen_and_sum")
    acc = np.zeros(d if accumulate else 0, dtype=np.float32)
    sq = np.zeros(n, dtype=np.float64)
    if n:
        _screen_and_sum(as_numba_list(rows), c, acc, sq, d, accumulate)
    return (acc if accumulate else None), sq


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _dot_4x4(a0, a1, a2, a3, b0, b1, b2, b3, start, stop, g, ia, ib):  # pragma: no cover
    # 16 inner products over values [start, stop), in 16 independent SIMD accumulators:
    # eight vector loads feed sixteen FMAs. Unsigned indices: numba then emits no
    # negative-index wraparound, and LLVM vectorises the loop.
    s00 = s01 = s02 = s03 = np.float32(0.0)
    s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = np.float32(0.0)
    s30 = s31 = s32 = s33 = np.float32(0.0)
    for j in range(uint64(start), uint64(stop)):
        x0, x1, x2, x3 = a0[j], a1[j], a2[j], a3[j]
        y0, y1, y2, y3 = b0[j], b1[j], b2[j], b3[j]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s03 += x0 * y3
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s13 += x1 * y3
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s23 += x2 * y3
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
        s33 += x3 * y3
    g[ia, ib] += s00
    g[ia, ib + 1] += s01
    g[ia, ib + 2] += s02
    g[ia, ib + 3] += s03
    g[ia + 1, ib] += s10
    g[ia + 1, ib + 1] += s11
    g[ia + 1, ib + 2] += s12
    g[ia + 1, ib + 3] += s13
    g[ia + 2, ib] += s20
    g[ia + 2, ib + 1] += s21
    g[ia + 2, ib + 2] += s22
    g[ia + 2, ib + 3] += s23
    g[ia + 3, ib] += s30
    g[ia + 3, ib + 1] += s31
    g[ia + 3, ib + 2] += s32
    g[ia + 3, ib + 3] += s33


_GRAM_CHUNK = 4096  # 8 rows x 16 KiB per sweep: the chunks stay in L2 while tiles pass


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _gram(rows, d):  # pragma: no cover - compiled
    # upper block triangle of the inner products, four rows against four per sweep
    m = len(rows)  # the caller pads the list to a multiple of four
    g = np.zeros((m, m))
    for s in range(0, d, _GRAM_CHUNK):
        e = min(s + _GRAM_CHUNK, d)
        for a in range(0, m, 4):
            a0, a1, a2, a3 = rows[a], rows[a + 1], rows[a + 2], rows[a + 3]
            for b in range(a, m, 4):
                _dot_4x4(a0, a1, a2, a3, rows[b], rows[b + 1], rows[b + 2], rows[b + 3],
                         s, e, g, a, b)
    return g


def gram(rows: Sequence[np.ndarray]) -> np.ndarray:
    """The n x n float64 matrix of inner products of the rows, without stacking them.

    Each product is summed in float32 over chunks of ``_GRAM_CHUNK`` values and in
    float64 across chunks (as accurate as a float32 BLAS ``X @ X.T``). Four rows meet
    four rows per sweep, so every value read from cache feeds four multiply-adds.
    """
    n = len(rows)
    if n == 0:
        return np.zeros((0, 0))
    d = common_length(rows, "gram")
    zero = np.zeros(d, dtype=np.float32)  # padding rows: products with them are 0
    g = _gram(as_numba_list([*rows, *([zero] * (-n % 4))]), d)
    upper = np.triu(g)  # every 4x4 block at or above the diagonal, mirrored below
    return (upper + np.triu(g, 1).T)[:n, :n]

"""Whole-array numpy kernels shared by the aggregators.

Conventions: ``X`` is the n x d float32 matrix of stacked updates (`UpdateBatch.stacked`),
``rows`` a list of n flat float32 vectors (zero-copy views of reply bytes), weights are
float64. Column statistics are computed on cache-sized column tiles transposed so that
each coordinate's n values are contiguous (numpy's vectorised sort then works on short
contiguous rows); the tile loop is over blocks of coordinates, never over clients or layers.

These numpy kernels are the reference and the default. `use_accelerator("numba")` (or
``FEDSILO_KERNELS=numba``) routes the few row-streaming kernels through the compiled
ones in `fused`, which tests check equal to these.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
from scipy.linalg.blas import saxpy
from threadpoolctl import ThreadpoolController

F32 = np.float32
_TILE_BYTES = 4 << 20  # ~4 MiB per transposed tile: stays in the last-level cache
_POOLS = ThreadpoolController()  # inspected once; limiting it later costs microseconds

# The one door to compiled code: "numba" routes `weighted_sum`, `row_dots` (norms),
# `norms_and_sum` and `gram_of_rows` through `fused` (numba kernels, compiled on first use: about a second
# per process, cached on disk by numba). The default, "numpy", compiles nothing.
ACCELERATORS = ("numpy", "numba")
_accelerator = "numpy"


def use_accelerator(name: str) -> str:
    """Select the kernels: ``"numpy"`` (the reference, default) or ``"numba"`` (compiled,
    same results within float32 rounding). Returns the previous choice. The environment
    variable ``FEDSILO_KERNELS`` sets the choice at import."""
    global _accelerator
    if name not in ACCELERATORS:
        raise ValueError(f"kernels: unknown accelerator {name!r}; choose from {ACCELERATORS}")
    previous, _accelerator = _accelerator, name
    return previous


use_accelerator(os.environ.get("FEDSILO_KERNELS", "").strip().lower() or "numpy")


def accelerated() -> bool:
    """True when the numba accelerator is selected."""
    return _accelerator == "numba"


def single_threaded_blas() -> AbstractContextManager[object]:
    """Context in which BLAS runs on one thread (for memory-bound level-1 loops)."""
    return _POOLS.limit(limits=1, user_api="blas")


def weighted_sum(rows: Sequence[np.ndarray], coeffs: np.ndarray) -> np.ndarray:
    """``sum_i coeffs[i] * rows[i]`` as float32, streaming over rows without stacking.

    One BLAS ``saxpy`` per row (read the row once, update the accumulator in place): the
    streaming accumulation the design allows over clients. BLAS runs single-threaded
    here: a level-1 op is memory-bound, and on a shared machine OpenBLAS's spinning
    worker threads made it several times slower. Coefficients must fit float32.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    if rows and accelerated():
        from .fused import screen_and_sum

        return screen_and_sum(rows, c)[0]
    acc = np.zeros(rows[0].size if rows else 0, dtype=F32)
    with single_threaded_blas():
        for row, ci in zip(rows, c, strict=True):
            if ci != 0.0:
                acc = saxpy(row, acc, a=float(ci))
    return acc


SUM_TILE = 1 << 15
"""Values per tile of `norms_and_sum` (128 KB of float32: a row's tile and the
accumulator's stay in cache between the norm and the sum). A multiple of every SIMD
width, so each element's saxpy arithmetic is the same as over the whole row."""


def norms_and_sum(rows: Sequence[np.ndarray], coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(weighted_sum(rows, coeffs), row_dots(rows))`` in one pass over the rows.

    numpy: tile by tile, each row's tile is read from memory once for its squared norm
    (float32 dot per tile, summed in float64; a total beyond float32's range is Inf, as
    `row_dots` reports it) and its share of the sum (the same saxpy as `weighted_sum`,
    so the sum is bit-identical). With the numba accelerator: `fused.screen_and_sum`.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    if rows and accelerated():
        from .fused import screen_and_sum

        total, sq = screen_and_sum(rows, c)
        assert total is not None
        return total, sq
    d = rows[0].size if rows else 0
    acc = np.zeros(d, dtype=F32)
    sq = np.zeros(len(rows), dtype=np.float64)
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, d, SUM_TILE):
            tile = acc[start:start + SUM_TILE]
            for i, (row, ci) in enumerate(zip(rows, c, strict=True)):
                part = row[start:start + SUM_TILE]
                sq[i] += float(np.dot(part, part))
                if ci != 0.0:
                    tile = saxpy(part, tile, a=float(ci))
            acc[start:start + SUM_TILE] = tile
    sq[sq > np.finfo(F32).max] = np.inf  # what a float32-accumulated dot gives
    return acc, sq


def normalized(weights: np.ndarray) -> np.ndarray:
    """Weights scaled to sum to one (uniform when they sum to zero)."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    return w / total if total > 0 else np.full(w.shape, 1.0 / max(w.size, 1))


def gram(X: np.ndarray) -> np.ndarray:
    """The n x n matrix of inner products ``X @ X.T`` (one float32 matmul), as float64.

    Single-threaded: for this skinny shape (n << d) OpenBLAS's threaded sgemm gained
    nothing on an idle 2-core machine and became ~50x slower (0.19 s -> 10 s for
    100 x 10^6) as soon as other processes competed for the cores.
    """
    with single_threaded_blas():
        return (X @ X.T).astype(np.float64)


def gram_of_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """`gram` of a list of rows (stacked first; `fused.gram` reads them in place)."""
    if rows and accelerated():
        from .fused import gram as rows_gram

        return rows_gram(rows)
    return gram(np.stack(rows)) if rows else np.zeros((0, 0))


# |a|^2 - 2 a.b + |b|^2 loses relative precision ~1e-7 * sqrt(d) of |a|^2 + |b|^2 in float32;
# distances below this fraction of |a|^2 + |b|^2 are recomputed exactly from the rows.
_CANCEL = 1e-3


def sq_distances(G: np.ndarray, X: np.ndarray | Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Pairwise squared Euclidean distances from a Gram matrix (clipped at 0, zero diagonal).

    When the rows ``X`` are given, pairs close enough for the Gram formula to lose
    precision (near-duplicates, e.g. colluding attackers) are recomputed exactly.
    """
    sq = np.diag(G)
    scale = sq[:, None] + sq[None, :]
    D = scale - 2.0 * G
    np.maximum(D, 0.0, out=D)
    if X is not None:
        ii, jj = np.nonzero(np.triu(_CANCEL * scale > D, k=1))
        for i, j in zip(ii, jj, strict=True):  # only near-duplicate pairs
            diff = (X[i] - X[j]).astype(np.float64)
            D[i, j] = D[j, i] = float(diff @ diff)
    np.fill_diagonal(D, 0.0)
    return D


def krum_scores(D: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row: sum of squared distances to its ``n - f - 2`` nearest others.

    Same neighbour count as Flower (at least 1). Uses `np.partition` on each row of
    the distance matrix with the diagonal excluded.
    """
    n = D.shape[0]
    k = max(1, n - f - 2)
    if n == 1:
        return np.zeros(1)
    off = D.copy()
    np.fill_diagonal(off, np.inf)
    k = min(k, n - 1)
    nearest = np.partition(off, k - 1, axis=1)[:, :k]
    return nearest.sum(axis=1)


def sorted_column_stats(
    X: np.ndarray,
    stats: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    n_out: int,
    row_stat: Callable[[np.ndarray, tuple[np.ndarray, ...]], np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """Apply ``stats`` to every coordinate's sorted values, tile by tile.

    Parameters
    ----------
    X : n x d float32 matrix.
    stats : maps a ``(B, n)`` array whose rows are the sorted values of B coordinates
        to ``n_out`` arrays of length B.
    n_out : how many per-coordinate outputs ``stats`` returns.
    row_stat : optional per-row reduction over the tile while it is in cache:
        ``row_stat(X[:, tile], tile_outputs) -> (n,)`` values, summed over tiles and
        returned as an extra last output.

    Returns ``n_out`` float32 vectors of length d (plus the n-vector of ``row_stat``).
    """
    n, d = X.shape
    outs = tuple(np.empty(d, dtype=F32) for _ in range(n_out))
    per_row = np.zeros(n, dtype=np.float64)
    block = max(1024, _TILE_BYTES // (4 * max(n, 1)))
    tile = np.empty((block, n), dtype=F32)
    with single_threaded_blas():  # tiles are small: BLAS thread start-up would dominate
        for start in range(0, d, block):
            stop = min(start + block, d)
            t = tile[: stop - start]
            t[...] = X[:, start:stop].T
            t.sort(axis=1)
            values = stats(t)
            for out, value in zip(outs, values, strict=True):
                out[start:stop] = value
            if row_stat is not None:  # contiguous outputs: strided compares are ~10x slower
                per_row += row_stat(X[:, start:stop], tuple(out[start:stop] for out in outs))
    return (*outs, per_row) if row_stat is not None else outs


def _median_of_sorted(s: np.ndarray) -> np.ndarray:
    n = s.shape[1]
    if n % 2:
        return s[:, n // 2]
    return (s[:, n // 2 - 1] + s[:, n // 2]) / F32(2)


def coordinate_median(X: np.ndarray) -> np.ndarray:
    """Coordinate-wise median (mean of the two middle values for even n), float32."""
    return sorted_column_stats(X, lambda s: (_median_of_sorted(s),), 1)[0]


def trimmed_mean(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate-wise mean after dropping the k smallest and k largest values.

    Returns ``(mean, outside)``: the float32 mean and, per row, the fraction of its
    coordinates that fell outside the kept range (counted while each tile is in cache).
    """
    n, d = X.shape
    keep = np.zeros(n, dtype=F32)
    keep[k : n - k] = F32(1.0 / (n - 2 * k))

    def stats(s: np.ndarray) -> tuple[np.ndarray, ...]:
        # mean of the kept ranks as one matrix-vector product over the sorted tile
        return (s @ keep, s[:, k], s[:, n - k - 1])

    def outside(block: np.ndarray, values: tuple[np.ndarray, ...]) -> np.ndarray:
        _, low, high = values
        return np.count_nonzero((block < low) | (block > high), axis=1)

    if k == 0:
        return stats_mean_only(X), np.zeros(n)
    mean, _, _, count = sorted_column_stats(X, stats, 3, row_stat=outside)
    return mean, count / d


def stats_mean_only(X: np.ndarray) -> np.ndarray:
    """Plain coordinate-wise mean as float32 (trimmed mean with nothing cut)."""
    return X.mean(axis=0, dtype=F32)


def closest_to_median_mean(X: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate, the mean of the ``beta`` values closest to the coordinate median.

    (Bulyan's second stage.) Works on sorted tiles: the ``beta`` values nearest the
    median form a contiguous window of the sorted values; ties at equal distance are
    resolved towards lower ranks.
    """
    n = X.shape[0]
    starts = np.arange(n - beta + 1)

    def stats(s: np.ndarray) -> tuple[np.ndarray]:
        med = _median_of_sorted(s)[:, None]
        # window [j, j+beta) has radius max(med - s[j], s[j+beta-1] - med)
        radius = np.maximum(med - s[:, starts], s[:, starts + beta - 1] - med)
        best = np.argmin(radius, axis=1)
        csum = np.concatenate(
            [np.zeros((s.shape[0], 1)), np.cumsum(s, axis=1, dtype=np.float64)], axis=1
        )
        rows = np.arange(s.shape[0])
        total = csum[rows, best + beta] - csum[rows, best]
        return ((total / beta).astype(F32),)

    return sorted_column_stats(X, stats, 1)[0]


def row_dots(rows: Sequence[np.ndarray], v: np.ndarray | None = None) -> np.ndarray:
    """Per row, ``row . v`` (or ``row . row`` when ``v`` is None), float64, without stacking.

    Accumulated in float32 (BLAS sdot): a row with NaN/Inf, or whose squares overflow
    float32, gets a non-finite value, which is how screening sees it.
    """
    if v is None and rows and accelerated():
        from .fused import screen_and_sum

        return screen_and_sum(rows)[1]
    # overflow is expected and reported: an Inf norm is how screening sees the row
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
        if v is None:
            return np.array([np.dot(r, r) for r in rows], dtype=np.float64)
        return np.array([np.dot(r, v) for r in rows], dtype=np.float64)


def distances_to(X: np.ndarray, sq_norms: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``X`` to ``z`` via ``|x|^2 - 2 x.z + |z|^2``.

    One matrix-vector product; rows close to ``z`` (where the formula cancels) are
    recomputed exactly.
    """
    zz = float(np.dot(z, z))
    sq = sq_norms - 2.0 * (X @ z).astype(np.float64) + zz
    np.maximum(sq, 0.0, out=sq)
    close = np.flatnonzero(sq < _CANCEL * (sq_norms + zz))
    if close.size:  # few rows: recompute exactly where the formula cancels
        diff = (X[close] - z).astype(np.float64)
        sq[close] = np.einsum("ij,ij->i", diff, diff)
    return np.sqrt(sq)

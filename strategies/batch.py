"""`UpdateBatch`: one round's accepted site updates, decoded once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numba-free import for type checkers only
    from .median_kernels import MedianPass


def mean_coefficients(weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients of a weighted sum that no weight can overflow, and the factor that
    turns that sum into the weighted mean: ``mean = sum_i coeffs[i] * x_i * factor``.

    ``coeffs = weights * 2**-e`` in float64, with ``2**e`` the smallest power of two above
    ``sum(weights)``: every coefficient lies in [0, 1) and they sum to [0.5, 1), so the
    float32 sum is bounded by the largest row whatever the weights (a count of 1e39 once
    turned the model into NaN). Scaling by a power of two is exact in binary floating
    point, so ``sum * factor`` has exactly the bits of the unscaled ``sum_i w_i x_i / W``
    wherever that did not overflow (barring products in float32's subnormal range):
    models of earlier versions are reproduced. Weights must be finite and >= 0; all
    zero (or none) gives zero coefficients and factor 1.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    total = float(w.sum())
    if not total > 0:
        return np.zeros_like(w), 1.0
    _, exponent = np.frexp(total)  # total = m * 2**exponent, m in [0.5, 1)
    coeffs = np.ldexp(w, -int(exponent))
    return coeffs, 1.0 / float(np.ldexp(total, -int(exponent)))


@dataclass
class UpdateBatch:
    """The accepted updates of one round, as flat float32 model deltas.

    Parameters
    ----------
    updates : one flat float32 vector per site, ``new_local_model - global_model``.
        Usually zero-copy views of the reply messages' bytes: never write to them.
    weights : one non-negative weight per site (its example count), float64.
    site_ids : stable site ids, aligned with ``updates``.
    node_ids : Flower node ids, aligned with ``updates`` (0 where unknown).
    root_update : the server's own update on its root dataset (FLTrust), if any.
    weighted_sum : ``sum_i coeffs[i] * updates[i]`` (float32) with ``coeffs`` the first half
        of `mean_coefficients(weights)`, when the decoder computed it in its screening pass
        (`batch_from_replies(..., accumulate=True)`); read it through `precomputed_sum`,
        which ignores it once rows or weights were replaced.
    gram : the n x n float64 inner products of the updates when the decoder computed them
        in its screening pass (`batch_from_replies(..., gram=True)`: the diagonal gave the
        norms); read it through `precomputed_gram`, which ignores it once rows changed.
    gram_sum : ``sum_i weights[i] * updates[i]`` in float64, when the decoder computed it
        with the Gram matrix (`batch_from_replies(..., gram=True)`); read it through
        `precomputed_gram_sum`, which ignores it once rows or weights were replaced.
    median : the coordinate-wise median and each row's squared distance to it when the
        decoder computed them in its screening pass (`batch_from_replies(...,
        median=True)`, a `median_kernels.MedianPass`); read it through
        `precomputed_median`, which ignores it once rows changed.
    """

    updates: list[np.ndarray]
    weights: np.ndarray
    site_ids: list[str]
    node_ids: list[int] = field(default_factory=list)
    root_update: np.ndarray | None = None
    weighted_sum: np.ndarray | None = None
    gram: np.ndarray | None = None
    gram_sum: np.ndarray | None = None
    median: MedianPass | None = None

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if not self.node_ids:
            self.node_ids = [0] * len(self.updates)
        n = len(self.updates)
        if not (len(self.weights) == len(self.site_ids) == len(self.node_ids) == n):
            raise ValueError(
                f"UpdateBatch fields disagree: {n} updates, {len(self.weights)} weights, "
                f"{len(self.site_ids)} site ids, {len(self.node_ids)} node ids"
            )
        # the rows (held, so their identity cannot be reused) and weights the sum is of
        self._sum_of = (tuple(self.updates), self.weights.copy())

    def _rows_unchanged(self) -> bool:
        rows, _ = self._sum_of
        return len(rows) == len(self.updates) and all(
            a is b for a, b in zip(rows, self.updates, strict=True)
        )

    def _sums_valid(self) -> bool:
        """Rows and weights are still those the screening pass summed."""
        return self._rows_unchanged() and np.array_equal(self._sum_of[1], self.weights)

    def precomputed_sum(self) -> np.ndarray | None:
        """`weighted_sum` if it still matches the current rows and weights, else None."""
        return self.weighted_sum if self.weighted_sum is not None and self._sums_valid() else None

    def precomputed_gram(self) -> np.ndarray | None:
        """`gram` if it still matches the current rows, else None."""
        return self.gram if self.gram is not None and self._rows_unchanged() else None

    def precomputed_gram_sum(self) -> np.ndarray | None:
        """`gram_sum` if it still matches the current rows and weights, else None."""
        return self.gram_sum if self.gram_sum is not None and self._sums_valid() else None

    def precomputed_median(self) -> MedianPass | None:
        """`median` if it still matches the current rows, else None."""
        return self.median if self.median is not None and self._rows_unchanged() else None

    @property
    def n(self) -> int:
        """Number of updates."""
        return len(self.updates)

    @property
    def dim(self) -> int:
        """Length of each flat update."""
        return int(self.updates[0].size) if self.updates else 0

    @cached_property
    def stacked(self) -> np.ndarray:
        """The n x d float32 matrix, built once, for kernels that need every row."""
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for i, row in enumerate(self.updates):  # one memcpy per row into the matrix
            out[i] = row
        return out

    def subset(self, index: np.ndarray | list[int]) -> UpdateBatch:
        """A batch with only the rows at ``index`` (in that order)."""
        idx = [int(i) for i in index]
        return UpdateBatch(
            updates=[self.updates[i] for i in idx],
            weights=self.weights[idx],
            site_ids=[self.site_ids[i] for i in idx],
            node_ids=[self.node_ids[i] for i in idx],
            root_update=self.root_update,
            # keeping every row in order keeps a still-valid precomputed sum
            weighted_sum=self.precomputed_sum() if idx == list(range(self.n)) else None,
            gram_sum=self.precomputed_gram_sum() if idx == list(range(self.n)) else None,
            gram=None if (g := self.precomputed_gram()) is None else g[np.ix_(idx, idx)],
            # a median is of all rows: it survives only a subset that keeps all of them
            median=self.precomputed_median() if sorted(idx) == list(range(self.n)) else None,
        )

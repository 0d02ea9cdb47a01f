"""`UpdateBatch`: one round's accepted site updates, and the reductions of them that
aggregators ask for, each computed on first use and kept.

Aggregators declare nothing about precomputation: they read ``batch.sq_norms``,
``batch.weighted_mean``, ``batch.gram``, ``batch.median`` or ``batch.stacked``, and
whatever is read is computed once per batch (screening reads ``sq_norms`` first, so an
aggregator that needs the norms gets them for free). A batch never changes after it is
built; `subset`, `with_updates` and `with_root_update` return new batches, carrying over
the reductions that stay valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import kernels


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


def _read_only(array: np.ndarray) -> np.ndarray:
    """``array``, flagged read-only: a cached reduction is shared by every reader."""
    array.setflags(write=False)
    return array


# the lazily computed reductions (names of the cached properties below)
_PER_ROW = ("sq_norms",)  # one value per row: any subset keeps its entries
_OF_ROWS = ("gram",)  # n x n over the rows: a subset keeps its sub-matrix
_OF_ALL = ("median", "stacked", "weighted_mean")  # of every row (and weight) as they are


@dataclass(eq=False)
class UpdateBatch:
    """The accepted updates of one round, as flat float32 model deltas. Immutable.

    Reductions (`sq_norms`, `weighted_mean`, `gram`, `median`, `stacked`) are computed
    on first read, kept, and read-only: copy one before changing it.

    Parameters
    ----------
    updates : one flat float32 vector per site, ``new_local_model - global_model``
        (held as a tuple). Usually zero-copy views of the reply messages' bytes: never
        write to them.
    weights : one non-negative weight per site (its example count), float64 (held as a
        read-only copy).
    site_ids : stable site ids, aligned with ``updates``.
    node_ids : Flower node ids, aligned with ``updates`` (0 where unknown).
    root_update : the server's own update on its root dataset (FLTrust), if any (set
        through `with_root_update`).
    """

    updates: Sequence[np.ndarray]
    weights: np.ndarray
    site_ids: Sequence[str]
    node_ids: Sequence[int] = field(default_factory=tuple)
    root_update: np.ndarray | None = None

    def __post_init__(self) -> None:
        weights = np.array(self.weights, dtype=np.float64).reshape(-1)  # a private copy
        weights.setflags(write=False)
        n = len(self.updates)
        put = object.__setattr__
        put(self, "updates", tuple(self.updates))
        put(self, "weights", weights)
        put(self, "site_ids", tuple(self.site_ids))
        put(self, "node_ids", tuple(self.node_ids) if self.node_ids else (0,) * n)
        if not (len(self.weights) == len(self.site_ids) == len(self.node_ids) == n):
            raise ValueError(
                f"UpdateBatch fields disagree: {n} updates, {len(self.weights)} weights, "
                f"{len(self.site_ids)} site ids, {len(self.node_ids)} node ids"
            )
        put(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_sealed", False):
            raise FrozenInstanceError(f"UpdateBatch is immutable: cannot assign {name!r} "
                                      "(use subset, with_updates or with_root_update)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"UpdateBatch is immutable: cannot delete {name!r}")

    @property
    def n(self) -> int:
        """Number of updates."""
        return len(self.updates)

    @property
    def dim(self) -> int:
        """Length of each flat update."""
        return int(self.updates[0].size) if self.updates else 0

    # --- reductions, each computed on first use -----------------------------------

    @cached_property
    def sq_norms(self) -> np.ndarray:
        """Squared L2 norm of each row, float64 (float32-accumulated: NaN/Inf where a row
        is not finite or overflows float32 when squared). Screening reads these."""
        if self.n and self.weights.sum() > 0:
            # the rows are summed in the same pass as their norms (memory bound: the sum
            # is nearly free while a tile is in cache); keep the mean it gives
            coeffs, factor = mean_coefficients(self.weights)
            total, sq = kernels.norms_and_sum(self.updates, coeffs)
            self.__dict__["weighted_mean"] = _read_only(total * np.float32(factor))
            return _read_only(sq)
        return _read_only(kernels.row_dots(self.updates))

    @cached_property
    def weighted_mean(self) -> np.ndarray:
        """The example-weighted mean of the rows, float32 (the plain mean when every
        weight is zero; zeros of length `dim` when empty).

        Summed with `mean_coefficients` (weights scaled below 1 by a power of two), then
        scaled by its factor: the same arithmetic however the batch was built.
        """
        if self.weights.sum() > 0:
            coeffs, factor = mean_coefficients(self.weights)
            total = kernels.weighted_sum(self.updates, coeffs) * np.float32(factor)
        else:
            total = kernels.weighted_sum(self.updates, kernels.normalized(self.weights))
        return _read_only(total)

    @cached_property
    def gram(self) -> np.ndarray:
        """The n x n float64 matrix of inner products of the rows."""
        if kernels.accelerated():  # the compiled kernel reads the rows where they are
            return _read_only(kernels.gram_of_rows(self.updates))
        return _read_only(kernels.gram(self.stacked))  # one sgemm; the stacked rows serve others too

    @cached_property
    def median(self) -> np.ndarray:
        """The coordinate-wise median of the rows (mean of the two middle values for an
        even count), float32, unweighted."""
        return _read_only(kernels.coordinate_median(self.stacked))

    @cached_property
    def stacked(self) -> np.ndarray:
        """The n x d float32 matrix, built once, for kernels that need every row."""
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for i, row in enumerate(self.updates):  # one memcpy per row into the matrix
            out[i] = row
        return _read_only(out)

    # --- new batches from this one --------------------------------------------------

    def _cached(self, name: str) -> Any:
        return self.__dict__.get(name)

    def _derive(self, **changes: Any) -> UpdateBatch:
        fields = {"updates": self.updates, "weights": self.weights, "site_ids": self.site_ids,
                  "node_ids": self.node_ids, "root_update": self.root_update, **changes}
        return UpdateBatch(**fields)

    def subset(self, index: Iterable[int] | np.ndarray) -> UpdateBatch:
        """A batch with only the rows at ``index`` (in that order).

        Per-row reductions already computed (norms, Gram matrix) are carried over; the
        whole batch in its own order is returned as is.
        """
        idx = [int(i) for i in index]
        if idx == list(range(self.n)):
            return self
        out = self._derive(updates=[self.updates[i] for i in idx], weights=self.weights[idx],
                           site_ids=[self.site_ids[i] for i in idx],
                           node_ids=[self.node_ids[i] for i in idx])
        for name in _PER_ROW:
            if (value := self._cached(name)) is not None:
                out.__dict__[name] = _read_only(value[idx])
        for name in _OF_ROWS:
            if (value := self._cached(name)) is not None:
                out.__dict__[name] = _read_only(value[np.ix_(idx, idx)])
        return out

    def with_updates(self, updates: Sequence[np.ndarray]) -> UpdateBatch:
        """The same sites and weights with other rows (e.g. an attack's); nothing cached
        is carried over."""
        return self._derive(updates=updates)

    def with_root_update(self, root_update: np.ndarray | None) -> UpdateBatch:
        """The same batch with the server's root update (FLTrust); reductions already
        computed are carried over (none depends on the root update)."""
        out = self._derive(root_update=root_update)
        for name in (*_PER_ROW, *_OF_ROWS, *_OF_ALL):
            if (value := self._cached(name)) is not None:
                out.__dict__[name] = value
        return out

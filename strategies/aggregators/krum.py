"""Krum and Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import gram, gram_of_rows, krum_scores, sq_distances, weighted_sum


def krum_select(
    rows: np.ndarray | Sequence[np.ndarray], f: int, m: int, G: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``m`` rows with the lowest Krum scores (stable order), and all scores.

    Pairwise distances come from the Gram matrix ``G`` of the rows when given (an
    aggregator passes ``batch.gram``), else it is computed from the rows.
    """
    if G is None:
        G = gram(rows) if isinstance(rows, np.ndarray) else gram_of_rows(rows)
    scores = krum_scores(sq_distances(G, rows), f)
    return np.argsort(scores, kind="stable")[:m], scores


class MultiKrum(Aggregator):
    """Weighted mean of the ``m`` updates with the lowest Krum scores.

    The score of an update is the sum of squared distances to its ``n - f - 2``
    nearest neighbours (as Flower's ``select_multikrum``).
    """

    name: ClassVar[str] = "multi_krum"
    summary: ClassVar[str] = "weighted mean of the m updates with the lowest Krum scores"
    params: ClassVar[dict[str, Param]] = {
        "f": Param(int, 1, "number of Byzantine sites tolerated (needs n >= 2f + 3)"),
        "m": Param(int, 0, "number of updates averaged; 0 means n - f"),
    }
    f: int
    m: int

    def check_params(self) -> None:
        require(self.f >= 0, f"{self.name}: f must be >= 0, got {self.f}")
        require(self.m >= 0, f"{self.name}: m must be >= 0, got {self.m}")

    states_tolerance: ClassVar[bool] = True

    def selected_count(self, n: int) -> int:
        return self.m if self.m > 0 else n - self.f

    def tolerance(self, n: int) -> int:
        """Its stated ``f`` (the guarantee also needs n >= 2f + 3, checked by `validate`)."""
        return min(self.f, n)

    def tolerance_text(self, n: int) -> str:
        return f"f={self.f}"

    def validate(self, n_updates: int) -> None:
        require(
            n_updates >= 2 * self.f + 3,
            f"{self.name}: f={self.f} needs at least 2f+3 = {2 * self.f + 3} updates, "
            f"got {n_updates}",
        )
        require(
            self.selected_count(n_updates) <= n_updates,
            f"{self.name}: m={self.m} exceeds the {n_updates} updates",
        )

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        m = self.selected_count(batch.n)
        chosen, scores = krum_select(batch.updates, self.f, m, batch.gram)
        w = batch.weights[chosen]
        coeffs = np.zeros(batch.n)
        coeffs[chosen] = w / w.sum() if w.sum() > 0 else 1.0 / m
        keep = np.sort(chosen)  # the pass reads only the chosen rows, in index order
        update = weighted_sum([batch.updates[i] for i in keep], coeffs[keep])
        mask = np.zeros(batch.n, dtype=bool)
        mask[chosen] = True
        return AggregateResult(
            update=update,
            fates=["accepted" if s else f"rejected:{self.name}" for s in mask],
            scores=scores.tolist(),
            info={"selected": [int(i) for i in chosen]},
        )


class Krum(MultiKrum):
    """The single update with the lowest Krum score."""

    name: ClassVar[str] = "krum"
    summary: ClassVar[str] = "the one update closest to its n - f - 2 nearest neighbours"
    params: ClassVar[dict[str, Param]] = {
        "f": Param(int, 1, "number of Byzantine sites tolerated (needs n >= 2f + 3)"),
    }
    m: int = 1

    def selected_count(self, n: int) -> int:
        return 1

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        chosen, scores = krum_select(batch.updates, self.f, 1, batch.gram)
        i = int(chosen[0])
        return AggregateResult(
            update=np.array(batch.updates[i], dtype=np.float32, copy=True),
            fates=["accepted" if j == i else "rejected:krum" for j in range(batch.n)],
            scores=scores.tolist(),
            info={"selected": [i]},
        )

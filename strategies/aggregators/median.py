"""Coordinate-wise median (Yin et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

from ..base import AggregateResult, Aggregator, Param
from ..batch import UpdateBatch
from ..kernels import FUSED_MIN_VALUES, coordinate_median


class Median(Aggregator):
    """Coordinate-wise median of the deltas, unweighted (as Flower's FedMedian)."""

    name: ClassVar[str] = "median"
    uses_median: ClassVar[bool] = True
    summary: ClassVar[str] = "coordinate-wise median of the updates (unweighted)"
    params: ClassVar[dict[str, Param]] = {}

    states_tolerance: ClassVar[bool] = True

    def tolerance(self, n: int) -> int:
        """Fewer than half: the median's breakdown point."""
        return (n - 1) // 2

    def tolerance_text(self, n: int) -> str:
        return "fewer than half"

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        if batch.n * batch.dim >= FUSED_MIN_VALUES:  # compiled network over the unstacked rows
            from ..median_kernels import median_pass

            update = (batch.precomputed_median() or median_pass(batch.updates)).median
        else:
            update = coordinate_median(batch.stacked)
        return AggregateResult(update=update, fates=["accepted"] * batch.n)

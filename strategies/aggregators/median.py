"""Coordinate-wise median (Yin et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

from ..base import AggregateResult, Aggregator, Param
from ..batch import UpdateBatch


class Median(Aggregator):
    """Coordinate-wise median of the deltas, unweighted (as Flower's FedMedian)."""

    name: ClassVar[str] = "median"
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
        return AggregateResult(update=batch.median, fates=["accepted"] * batch.n)

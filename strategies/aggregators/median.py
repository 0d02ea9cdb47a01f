"""Coordinate-wise median (Yin et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

from ..base import AggregateResult, Aggregator, Param
from ..batch import UpdateBatch
from ..kernels import coordinate_median


class Median(Aggregator):
    """Coordinate-wise median of the deltas, unweighted (as Flower's FedMedian)."""

    name: ClassVar[str] = "median"
    summary: ClassVar[str] = "coordinate-wise median of the updates (unweighted)"
    params: ClassVar[dict[str, Param]] = {}

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        return AggregateResult(
            update=coordinate_median(batch.stacked), fates=["accepted"] * batch.n
        )

"""Weighted mean (FedAvg aggregation): streams over rows, never stacks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param
from ..batch import UpdateBatch
from ..kernels import normalized, weighted_sum


class Mean(Aggregator):
    """Example-weighted mean of the deltas (McMahan et al. 2017).

    Streams over the rows, or reuses the sum `batch_from_replies(..., accumulate=True)`
    computed in its screening pass when rows and weights are unchanged since.
    """

    name: ClassVar[str] = "mean"
    summary: ClassVar[str] = "weighted mean of the updates, weights = example counts (FedAvg)"
    params: ClassVar[dict[str, Param]] = {
        "weighted": Param(bool, True, "weight each update by its example count (false: plain mean)"),
    }
    needs_individual_updates: ClassVar[bool] = False
    weighted: bool

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        w = normalized(batch.weights if self.weighted else np.ones(batch.n))
        total = batch.precomputed_sum() if self.weighted else None
        if total is not None and batch.weights.sum() > 0:  # summed while screening
            update = total * np.float32(1.0 / batch.weights.sum())  # float32 * float32
        else:
            update = weighted_sum(batch.updates, w)
        return AggregateResult(
            update=update,
            fates=["accepted"] * batch.n,
            scores=None,
            info={"weights": w.tolist()},
        )

"""Weighted mean (FedAvg aggregation): streams over rows, never stacks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param
from ..batch import UpdateBatch, mean_coefficients
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
        if self.weighted and batch.weights.sum() > 0:
            # coefficients below 1 (no count can overflow the sum), and the same arithmetic
            # whether the screening pass summed the rows or not: a round's model does not
            # depend on which path ran, e.g. on whether a reply failed its signature check
            coeffs, factor = mean_coefficients(batch.weights)
            total = batch.precomputed_sum()  # summed while screening, with these coeffs
            if total is None:
                total = weighted_sum(batch.updates, coeffs)
            update = total * np.float32(factor)  # float32 * float32
        else:
            update = weighted_sum(batch.updates, w)
        return AggregateResult(
            update=update,
            fates=["accepted"] * batch.n,
            scores=None,
            info={"weights": w.tolist()},
        )

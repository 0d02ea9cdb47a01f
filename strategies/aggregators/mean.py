"""Weighted mean (FedAvg aggregation): streams over rows, never stacks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param
from ..batch import UpdateBatch
from ..kernels import normalized, weighted_sum


class Mean(Aggregator):
    """Example-weighted mean of the deltas (McMahan et al. 2017).

    Reads `UpdateBatch.weighted_mean`, which streams over the rows once.
    """

    name: ClassVar[str] = "mean"
    summary: ClassVar[str] = "weighted mean of the updates, weights = example counts (FedAvg)"
    params: ClassVar[dict[str, Param]] = {
        "weighted": Param(bool, True, "weight each update by its example count (false: plain mean)"),
    }
    sum_only: ClassVar[bool] = True
    weighted: bool

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        w = normalized(batch.weights if self.weighted else np.ones(batch.n))
        # weighted: the batch's own mean (summed once, with coefficients below 1 so no
        # count can overflow); unweighted: a plain streaming sum
        update = batch.weighted_mean if self.weighted else weighted_sum(batch.updates, w)
        return AggregateResult(
            update=update,
            fates=["accepted"] * batch.n,
            scores=None,
            info={"weights": w.tolist()},
        )

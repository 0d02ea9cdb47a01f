"""Norm bounding (Sun et al. 2019): clip each update's L2 norm, then weighted mean."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import normalized, weighted_sum


class NormBounding(Aggregator):
    """Scale every update to at most ``max_norm`` (L2), then take the weighted mean.

    Streams over rows (no stacking). Score of a row: its L2 norm before clipping.
    """

    name: ClassVar[str] = "norm_bounding"
    summary: ClassVar[str] = "clip each update to an L2 norm bound, then weighted mean"
    params: ClassVar[dict[str, Param]] = {
        "max_norm": Param(float, 10.0, "L2 norm bound on every update (scale it to typical update norms)"),
    }
    max_norm: float

    def check_params(self) -> None:
        require(self.max_norm > 0, f"norm_bounding: max_norm must be > 0, got {self.max_norm}")

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        norms = np.sqrt(batch.sq_norms)
        factors = np.minimum(1.0, self.max_norm / np.maximum(norms, 1e-30))
        update = weighted_sum(batch.updates, normalized(batch.weights) * factors)
        return AggregateResult(
            update=update,
            fates=["clipped" if f < 1.0 else "accepted" for f in factors],
            scores=norms.tolist(),
            info={"max_norm": self.max_norm},
        )

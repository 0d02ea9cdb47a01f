"""A third-party-style aggregator used by the registry tests through an entry point."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedsilo.strategies import AggregateResult, Aggregator, Param, UpdateBatch


class FirstRow(Aggregator):
    """Returns the first update scaled by ``scale`` (a toy rule)."""

    name: ClassVar[str] = "first_row"
    summary: ClassVar[str] = "the first update, scaled"
    params: ClassVar[dict[str, Param]] = {"scale": Param(float, 1.0, "multiplier")}
    scale: float

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        return AggregateResult(
            update=(np.float32(self.scale) * batch.updates[0]).astype(np.float32),
            fates=["accepted"] + ["rejected:first_row"] * (batch.n - 1),
        )


class NotAnAggregator:
    name = "broken"

"""Coordinate-wise trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import trimmed_mean


class TrimmedMean(Aggregator):
    """Per coordinate, drop the ``int(beta * n)`` smallest and largest values and average.

    Unweighted, same cut as Flower's FedTrimmedAvg / ``scipy.stats.trim_mean``.
    Score of a row: the fraction of its coordinates that fell outside the kept range;
    its fate is ``"trimmed"`` when that fraction exceeds one half.
    """

    name: ClassVar[str] = "trimmed_mean"
    summary: ClassVar[str] = "coordinate-wise mean after cutting the beta fraction at each end"
    params: ClassVar[dict[str, Param]] = {
        "beta": Param(float, 0.2, "fraction cut at each end of every coordinate, in [0, 0.5)"),
    }
    beta: float

    def check_params(self) -> None:
        require(0.0 <= self.beta < 0.5, f"trimmed_mean: beta must be in [0, 0.5), got {self.beta}")

    states_tolerance: ClassVar[bool] = True

    def tolerance(self, n: int) -> int:
        """``int(beta * n)``: with more attackers than values cut per side, an attacker's
        value can survive the cut on every coordinate."""
        return int(self.beta * n)

    def tolerance_text(self, n: int) -> str:
        return f"beta={self.beta} cuts {self.tolerance(n)} per side"

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        k = int(self.beta * batch.n)
        mean, frac = trimmed_mean(batch.stacked, k)
        return AggregateResult(
            update=mean,
            fates=["trimmed" if f > 0.5 else "accepted" for f in frac],
            scores=frac.tolist(),
            info={"cut_per_side": k},
        )

"""Centered clipping (Karimireddy, He & Jaggi 2021)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import F32, distances_to, normalized, single_threaded_blas


class CenteredClipping(Aggregator):
    """Iterate ``v <- v + sum_i w_i (x_i - v) min(1, tau / |x_i - v|)`` from ``v = 0``.

    Weights are the normalised example counts. Score of a row: its clip factor in
    the last iteration; fate ``"clipped"`` when that factor is below one.
    """

    name: ClassVar[str] = "centered_clipping"
    summary: ClassVar[str] = "iteratively clip updates around a moving centre (starts at 0)"
    params: ClassVar[dict[str, Param]] = {
        "tau": Param(float, 10.0, "clipping radius around the centre (L2; scale it to typical update norms)"),
        "iterations": Param(int, 3, "number of clipping iterations"),
    }
    tau: float
    iterations: int

    def check_params(self) -> None:
        require(self.tau > 0, f"centered_clipping: tau must be > 0, got {self.tau}")
        require(
            self.iterations >= 1,
            f"centered_clipping: iterations must be >= 1, got {self.iterations}",
        )

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        X = batch.stacked
        w = normalized(batch.weights)
        sq_norms = np.einsum("ij,ij->i", X, X, dtype=np.float64)
        v = np.zeros(batch.dim, dtype=F32)
        factors = np.ones(batch.n)
        with single_threaded_blas():  # memory-bound matrix-vector products
            for _ in range(self.iterations):
                dist = distances_to(X, sq_norms, v)
                factors = np.minimum(1.0, self.tau / np.maximum(dist, 1e-30))
                c = w * factors
                v = (F32(1.0 - c.sum()) * v + c.astype(F32) @ X).astype(F32)
        return AggregateResult(
            update=v,
            fates=["clipped" if f < 1.0 else "accepted" for f in factors],
            scores=factors.tolist(),
            info={"iterations": self.iterations},
        )

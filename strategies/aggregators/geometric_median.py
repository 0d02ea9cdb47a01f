"""Geometric median by Weiszfeld iterations (RFA, Pillutla et al. 2022; Vardi-Zhang step)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import F32, coordinate_median, distances_to, normalized, single_threaded_blas


def smoothed_weiszfeld(
    X: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    *,
    nu: float,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Minimise ``sum_i w_i |z - x_i|`` by Weiszfeld iterations from ``start``.

    Rows closer than ``nu`` to the iterate count as coinciding with it; for them the
    Vardi & Zhang (2000) step is used instead of dividing by a vanishing distance, so
    the iteration leaves a data point that is not the minimiser (plain smoothed
    Weiszfeld sticks to it, e.g. when the coordinate-wise median is a data point).

    Parameters
    ----------
    X : n x d float32 matrix of updates.
    weights : n normalised non-negative weights.
    start : initial point (length d).
    nu : distance under which a row coincides with the iterate.
    tol : stop when the objective improves by less than ``tol`` relatively.
    max_iter : iteration cap.

    Returns ``(z, beta, iterations, objective)`` with ``beta`` the final normalised
    Weiszfeld weights. Each iteration is one matrix-vector and one vector-matrix product.
    """
    sq_norms = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    z = np.asarray(start, dtype=F32)
    dist = distances_to(X, sq_norms, z)
    objective = float(weights @ dist)
    beta = weights
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        apart = dist > nu
        eta = float(weights[~apart].sum())
        beta = np.where(apart, weights / np.maximum(dist, nu), 0.0)
        total = beta.sum()
        if total <= 0:  # every row coincides with z
            beta = weights
            break
        beta = beta / total
        target = beta.astype(F32) @ X
        if eta > 0:  # Vardi-Zhang: move only as far as the pull of the other rows allows
            r = float(np.linalg.norm((target - z).astype(np.float64))) * total
            keep = min(1.0, eta / r) if r > 0 else 1.0
            target = (F32(1.0 - keep) * target + F32(keep) * z).astype(F32)
        z = target
        dist = distances_to(X, sq_norms, z)
        new_objective = float(weights @ dist)
        done = abs(objective - new_objective) <= tol * max(new_objective, 1e-30)
        objective = new_objective
        if done:
            break
    return z.astype(F32), beta, it, objective


class GeometricMedian(Aggregator):
    """Weighted geometric median of the deltas, started from the coordinate-wise median.

    Score of a row: its final Weiszfeld weight. Its fate is ``"downweighted"`` when
    its weight relative to its example-count share is below half the median of that
    ratio over all rows (it sits much farther from the median than the typical row).
    """

    name: ClassVar[str] = "geometric_median"
    summary: ClassVar[str] = "weighted geometric median (RFA Weiszfeld from the coordinate-wise median)"
    params: ClassVar[dict[str, Param]] = {
        "nu": Param(float, 1e-6, "smoothing: rows closer than nu to the iterate coincide with it"),
        "tol": Param(float, 1e-6, "stop when the objective improves by less than this, relatively"),
        "max_iter": Param(int, 100, "maximum number of Weiszfeld iterations"),
    }
    nu: float
    tol: float
    max_iter: int

    def check_params(self) -> None:
        require(self.nu > 0, f"geometric_median: nu must be > 0, got {self.nu}")
        require(self.tol > 0, f"geometric_median: tol must be > 0, got {self.tol}")
        require(self.max_iter >= 1, f"geometric_median: max_iter must be >= 1, got {self.max_iter}")

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        X = batch.stacked
        w = normalized(batch.weights)
        with single_threaded_blas():  # memory-bound matrix-vector products
            z, beta, iterations, objective = smoothed_weiszfeld(
                X, w, coordinate_median(X), nu=self.nu, tol=self.tol, max_iter=self.max_iter
            )
        ratio = beta / np.maximum(w, 1e-300)
        cut = 0.5 * float(np.median(ratio))
        return AggregateResult(
            update=z,
            fates=["downweighted" if r < cut else "accepted" for r in ratio],
            scores=beta.tolist(),
            info={"iterations": iterations, "objective": objective},
        )

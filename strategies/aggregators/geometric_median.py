"""Geometric median by Weiszfeld iterations (RFA, Pillutla et al. 2022; Vardi-Zhang step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import (
    F32,
    distances_to,
    normalized,
    single_threaded_blas,
)


def smoothed_weiszfeld(
    X: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    *,
    nu: float,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Minimise ``sum_i w_i |z - x_i|`` by Weiszfeld iterations from ``start`` (stacked rows).

    Parameters
    ----------
    X : n x d float32 matrix of updates.
    weights : n normalised non-negative weights.
    start : initial point (length d).
    nu, tol, max_iter : as in `weiszfeld`.

    Each iteration is one matrix-vector and one vector-matrix product; see `weiszfeld`
    for the iteration and what is returned.
    """
    sq_norms = np.einsum("ij,ij->i", X, X, dtype=np.float64)

    def step(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        target = beta.astype(F32) @ X
        return target, distances_to(X, sq_norms, target)

    z = np.asarray(start, dtype=F32)
    return weiszfeld(weights, z, distances_to(X, sq_norms, z), step,
                     lambda point: distances_to(X, sq_norms, point),
                     nu=nu, tol=tol, max_iter=max_iter)


def weiszfeld(
    weights: np.ndarray,
    start: np.ndarray,
    start_distances: np.ndarray,
    step: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    distances: Callable[[np.ndarray], np.ndarray],
    *,
    nu: float,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Smoothed Weiszfeld iterations for ``min_z sum_i w_i |z - x_i|``, rows behind callables.

    Rows closer than ``nu`` to the iterate count as coinciding with it; for them the
    Vardi & Zhang (2000) step is used instead of dividing by a vanishing distance, so
    the iteration leaves a data point that is not the minimiser (plain smoothed
    Weiszfeld sticks to it, e.g. when the coordinate-wise median is a data point).

    Parameters
    ----------
    weights : n normalised non-negative weights.
    start : initial point (float32, length d).
    start_distances : the n distances from the rows to ``start``.
    step : ``beta -> (sum_i beta_i x_i, distances of the rows to it)``; the rows are
        only ever touched through ``step`` and ``distances``, so a caller can do both
        in one pass over them.
    distances : ``z -> distances of the rows to z`` (only for the Vardi-Zhang step).
    nu : distance under which a row coincides with the iterate.
    tol : stop when the objective improves by less than ``tol`` relatively.
    max_iter : iteration cap.

    Returns ``(z, beta, iterations, objective)`` with ``beta`` the final normalised
    Weiszfeld weights.
    """
    z = start
    dist = start_distances
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
        target, target_dist = step(beta)
        keep = 0.0
        if eta > 0:  # Vardi-Zhang: move only as far as the pull of the other rows allows
            r = float(np.linalg.norm((target - z).astype(np.float64))) * total
            keep = min(1.0, eta / r) if r > 0 else 1.0
        if keep > 0:
            z = (F32(1.0 - keep) * target + F32(keep) * z).astype(F32)
            dist = distances(z)
        else:
            z, dist = target, target_dist
        new_objective = float(weights @ dist)
        done = abs(objective - new_objective) <= tol * max(new_objective, 1e-30)
        objective = new_objective
        if done:
            break
    return np.asarray(z, dtype=F32), beta, it, objective


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

    states_tolerance: ClassVar[bool] = True

    def tolerance(self, n: int) -> int:
        """Fewer than half (of the example-count weight; counted here as sites): the
        geometric median's breakdown point."""
        return (n - 1) // 2

    def tolerance_text(self, n: int) -> str:
        return "fewer than half"

    def check_params(self) -> None:
        require(self.nu > 0, f"geometric_median: nu must be > 0, got {self.nu}")
        require(self.tol > 0, f"geometric_median: tol must be > 0, got {self.tol}")
        require(self.max_iter >= 1, f"geometric_median: max_iter must be >= 1, got {self.max_iter}")

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        w = normalized(batch.weights)
        with single_threaded_blas():  # memory-bound matrix-vector products
            z, beta, iterations, objective = smoothed_weiszfeld(
                batch.stacked, w, batch.median, nu=self.nu, tol=self.tol, max_iter=self.max_iter
            )
        ratio = np.asarray(beta) / np.maximum(w, 1e-300)
        cut = 0.5 * float(np.median(ratio))
        return AggregateResult(
            update=z,
            fates=["downweighted" if r < cut else "accepted" for r in ratio],
            scores=beta.tolist(),
            info={"iterations": iterations, "objective": objective},
        )

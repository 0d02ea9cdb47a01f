"""Bulyan (El Mhamdi et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, require
from ..batch import UpdateBatch
from ..kernels import closest_to_median_mean, krum_scores, sq_distances

SELECTIONS = ("iterative", "multikrum")


def bulyan_select(D: np.ndarray, f: int, theta: int, selection: str) -> np.ndarray:
    """Indices of the ``theta`` rows Bulyan keeps, in selection order.

    ``iterative`` re-runs Krum on the remaining rows (the paper; Flower's legacy
    ``aggregate_bulyan``); ``multikrum`` keeps the theta lowest Krum scores of one
    pass (Flower 1.42's Message-API ``Bulyan``). Both reuse one distance matrix.
    """
    if selection == "multikrum":
        return np.argsort(krum_scores(D, f), kind="stable")[:theta]
    remaining = np.arange(D.shape[0])
    chosen: list[int] = []
    for _ in range(theta):  # theta small Krum passes on an n x n matrix, not over d
        sub = D[np.ix_(remaining, remaining)]
        best = int(np.argmin(krum_scores(sub, f)))
        chosen.append(int(remaining[best]))
        remaining = np.delete(remaining, best)
    return np.array(chosen, dtype=np.int64)


class Bulyan(Aggregator):
    """Select theta = n - 2f updates by Krum, then per coordinate average the
    beta = theta - 2f values closest to the coordinate-wise median (unweighted)."""

    name: ClassVar[str] = "bulyan"
    summary: ClassVar[str] = "Krum selection of n-2f updates, then a median-centred trimmed mean"
    params: ClassVar[dict[str, Param]] = {
        "f": Param(int, 1, "number of Byzantine sites tolerated (needs n >= 4f + 3)"),
        "selection": Param(
            str, "iterative", "'iterative' Krum as in the paper or one-pass 'multikrum' (Flower)"
        ),
    }
    f: int
    selection: str

    def check_params(self) -> None:
        require(self.f >= 0, f"bulyan: f must be >= 0, got {self.f}")
        require(
            self.selection in SELECTIONS,
            f"bulyan: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}",
        )

    states_tolerance: ClassVar[bool] = True

    def tolerance(self, n: int) -> int:
        """Its stated ``f`` (the guarantee also needs n >= 4f + 3, checked by `validate`)."""
        return min(self.f, n)

    def tolerance_text(self, n: int) -> str:
        return f"f={self.f}"

    def validate(self, n_updates: int) -> None:
        require(
            n_updates >= 4 * self.f + 3,
            f"bulyan: f={self.f} needs at least 4f+3 = {4 * self.f + 3} updates, got {n_updates}",
        )

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        X = batch.stacked
        D = sq_distances(batch.gram, X)
        theta = batch.n - 2 * self.f
        beta = theta - 2 * self.f
        chosen = bulyan_select(D, self.f, theta, self.selection)
        update = closest_to_median_mean(X[np.sort(chosen)], beta)
        mask = np.zeros(batch.n, dtype=bool)
        mask[chosen] = True
        return AggregateResult(
            update=update,
            fates=["accepted" if s else "rejected:bulyan" for s in mask],
            scores=krum_scores(D, self.f).tolist(),
            info={"selected": [int(i) for i in chosen], "theta": theta, "beta": beta},
        )

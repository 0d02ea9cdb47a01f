"""FedAdagrad (Reddi et al. 2021)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Param
from .adaptive import AdaptiveOptimizer, _params


class FedAdagrad(AdaptiveOptimizer):
    """``v <- v + delta^2`` (Flower's defaults: no first-moment momentum, beta_1 = 0)."""

    name: ClassVar[str] = "fedadagrad"
    summary: ClassVar[str] = "server Adagrad on the aggregated delta (Reddi et al. 2021)"
    params: ClassVar[dict[str, Param]] = _params(eta=0.1, beta_2=None, tau=1e-3, beta_1=0.0)
    beta_2: float = 0.0

    def second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return v + sq

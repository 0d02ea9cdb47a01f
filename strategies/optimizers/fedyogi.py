"""FedYogi (Reddi et al. 2021)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Param
from ..kernels import F32
from .adaptive import AdaptiveOptimizer, _params


class FedYogi(AdaptiveOptimizer):
    """``v <- v - (1 - b2) delta^2 sign(v - delta^2)`` (Flower's defaults)."""

    name: ClassVar[str] = "fedyogi"
    summary: ClassVar[str] = "server Yogi on the aggregated delta (Reddi et al. 2021)"
    params: ClassVar[dict[str, Param]] = _params(eta=0.01, beta_2=0.99, tau=1e-3)

    def second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return v - F32(1.0 - self.beta_2) * sq * np.sign(v - sq)

"""FedAdam (Reddi et al. 2021)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Param
from ..kernels import F32
from .adaptive import AdaptiveOptimizer, _params


class FedAdam(AdaptiveOptimizer):
    """``v <- b2 v + (1 - b2) delta^2`` with Adam bias correction (Flower's defaults)."""

    name: ClassVar[str] = "fedadam"
    summary: ClassVar[str] = "server Adam on the aggregated delta (Reddi et al. 2021)"
    params: ClassVar[dict[str, Param]] = _params(eta=0.1, beta_2=0.99, tau=1e-3)
    bias_correction: ClassVar[bool] = True

    def second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return F32(self.beta_2) * v + F32(1.0 - self.beta_2) * sq

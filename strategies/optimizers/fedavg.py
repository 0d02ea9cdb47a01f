"""FedAvg server step: ``model + lr * delta``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Param, ServerOptimizer, require
from ..kernels import F32


class FedAvg(ServerOptimizer):
    """Plain server step; with ``lr = 1`` the new model is the average local model."""

    name: ClassVar[str] = "fedavg"
    summary: ClassVar[str] = "model + lr * aggregated delta (lr = 1: plain FedAvg)"
    params: ClassVar[dict[str, Param]] = {
        "lr": Param(float, 1.0, "server learning rate applied to the aggregated delta"),
    }
    lr: float

    def check_params(self) -> None:
        require(self.lr > 0, f"fedavg: lr must be > 0, got {self.lr}")

    def step(self, model: np.ndarray, delta: np.ndarray) -> np.ndarray:
        # one new array, no temporaries: a pass over two model-sized vectors
        delta = np.asarray(delta, dtype=F32)
        model = np.asarray(model, dtype=F32)
        if self.lr == 1.0:
            return np.add(model, delta)
        out = np.multiply(delta, F32(self.lr))
        out += model
        return out

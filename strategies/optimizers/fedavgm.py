"""FedAvgM (Hsu et al. 2019): server momentum on the aggregated delta."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Param, ServerOptimizer, SettingError, require
from ..kernels import F32


class FedAvgM(ServerOptimizer):
    """``m <- momentum * m + delta``; ``model + lr * m`` (Flower's FedAvgM convention)."""

    name: ClassVar[str] = "fedavgm"
    summary: ClassVar[str] = "FedAvg with server momentum"
    params: ClassVar[dict[str, Param]] = {
        "lr": Param(float, 1.0, "server learning rate"),
        "momentum": Param(float, 0.9, "server momentum coefficient in [0, 1)"),
    }
    lr: float
    momentum: float

    def check_params(self) -> None:
        require(self.lr > 0, f"fedavgm: lr must be > 0, got {self.lr}")
        require(0.0 <= self.momentum < 1.0, f"fedavgm: momentum must be in [0, 1), got {self.momentum}")
        self._m: np.ndarray | None = None

    def step(self, model: np.ndarray, delta: np.ndarray) -> np.ndarray:
        d = np.asarray(delta, dtype=F32)
        if self._m is None:
            self._m = d.copy()
        else:
            self._m *= F32(self.momentum)
            self._m += d
        return (np.asarray(model, dtype=F32) + F32(self.lr) * self._m).astype(F32)

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        return {} if self._m is None else {"momentum_buffer": self._m.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray | float | int]) -> None:
        extra = sorted(set(state) - {"momentum_buffer"})
        if extra:
            raise SettingError(f"fedavgm: unexpected optimiser state keys {extra}")
        buf = state.get("momentum_buffer")
        self._m = None if buf is None else np.array(buf, dtype=F32, copy=True)

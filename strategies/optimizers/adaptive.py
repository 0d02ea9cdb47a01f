"""Adaptive server optimisers of Reddi et al. 2021 ("Adaptive Federated Optimization").

The aggregated delta plays the role of the negative pseudo-gradient:
``m <- b1 m + (1 - b1) delta``; the second moment ``v`` is updated by the
subclass rule; ``model + eta * m / (sqrt(v) + tau)``. FedAdam also applies
Adam's bias correction with the 1-based step count.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import Param, ServerOptimizer, SettingError, require
from ..kernels import F32


class AdaptiveOptimizer(ServerOptimizer):
    """Shared state and step for FedAdam, FedYogi and FedAdagrad."""

    bias_correction: ClassVar[bool] = False
    eta: float
    beta_1: float
    beta_2: float
    tau: float

    def check_params(self) -> None:
        require(self.eta > 0, f"{self.name}: eta must be > 0, got {self.eta}")
        require(0.0 <= self.beta_1 < 1.0, f"{self.name}: beta_1 must be in [0, 1), got {self.beta_1}")
        require(0.0 <= self.beta_2 < 1.0, f"{self.name}: beta_2 must be in [0, 1), got {self.beta_2}")
        require(self.tau > 0, f"{self.name}: tau must be > 0, got {self.tau}")
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._t = 0

    def second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        """New second moment from the old one and the squared delta."""
        raise NotImplementedError

    def step(self, model: np.ndarray, delta: np.ndarray) -> np.ndarray:
        d = np.asarray(delta, dtype=F32)
        if self._m is None or self._v is None:
            self._m = np.zeros_like(d)
            self._v = np.zeros_like(d)
        self._t += 1
        self._m = F32(self.beta_1) * self._m + F32(1.0 - self.beta_1) * d
        self._v = self.second_moment(self._v, d * d).astype(F32)
        eta = self.eta
        if self.bias_correction:
            eta *= np.sqrt(1.0 - self.beta_2**self._t) / (1.0 - self.beta_1**self._t)
        step = F32(eta) * self._m / (np.sqrt(self._v) + F32(self.tau))
        return (np.asarray(model, dtype=F32) + step).astype(F32)

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        if self._m is None or self._v is None:
            return {"t": self._t}
        return {"m": self._m.copy(), "v": self._v.copy(), "t": self._t}

    def load_state_dict(self, state: dict[str, np.ndarray | float | int]) -> None:
        extra = sorted(set(state) - {"m", "v", "t"})
        if extra:
            raise SettingError(f"{self.name}: unexpected optimiser state keys {extra}")
        self._t = int(state.get("t", 0))
        m, v = state.get("m"), state.get("v")
        self._m = None if m is None else np.array(m, dtype=F32, copy=True)
        self._v = None if v is None else np.array(v, dtype=F32, copy=True)


def _params(
    eta: float, beta_2: float | None, tau: float, beta_1: float = 0.9
) -> dict[str, Param]:
    """The parameter table of an adaptive optimiser (beta_2 omitted when None)."""
    table = {
        "eta": Param(float, eta, "server learning rate"),
        "beta_1": Param(float, beta_1, "first-moment decay in [0, 1)"),
    }
    if beta_2 is not None:
        table["beta_2"] = Param(float, beta_2, "second-moment decay in [0, 1)")
    table["tau"] = Param(float, tau, "adaptivity floor added to sqrt(v)")
    return table

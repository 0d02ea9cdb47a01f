"""Trainer entry points for site.toml tests (importable as ``deploy.fake_trainers``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsilo.client.trainer import EvalResult, FitResult


class ConstantTrainer:
    """Adds ``step`` to every weight; a fixed fingerprint."""

    def __init__(self, step: float = 0.5, examples: int = 7) -> None:
        self.step = step
        self.examples = examples

    def fit(self, weights: dict[str, np.ndarray], config: Mapping[str, Any]) -> FitResult:
        return FitResult({k: v + np.float32(self.step) for k, v in weights.items()}, self.examples)

    def evaluate(self, weights: dict[str, np.ndarray], config: Mapping[str, Any]) -> EvalResult:
        return EvalResult(0.25, self.examples)

    def data_fingerprint(self) -> str:
        return "sha256:" + "ab" * 32

    def num_examples(self) -> int:  # declared at the handshake
        return self.examples


def good(step: float = 0.5, examples: int = 7) -> ConstantTrainer:
    return ConstantTrainer(step, examples)


def wrong_type() -> dict[str, int]:
    return {"not": 1}


NOT_CALLABLE = 3

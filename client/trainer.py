"""The `Trainer` protocol: what a data-holding site implements for its own data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass
class FitResult:
    """Result of local training.

    Parameters
    ----------
    weights : the new local model, one array per layer name (same names and shapes
        as the weights received).
    num_examples : how many local examples the training used (the site's weight
        in weighted aggregation).
    metrics : scalar training metrics, for example ``{"train_loss": 0.41}``.
    """

    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Result of local evaluation: loss, number of examples, scalar metrics."""

    loss: float
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """A site's local training and evaluation on its own data.

    fedsilo calls `fit` with the global model and the round's config and sends the
    difference between the returned weights and the global ones (never the data).
    ``config`` holds at least ``server_round``, ``local_epochs``, ``lr`` and
    ``proximal_mu`` (FedProx; 0 disables the proximal term).
    """

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult: ...

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult: ...

    def data_fingerprint(self) -> str:
        """A digest of the local data (or its manifest) and declared preprocessing."""
        ...

"""The `Trainer` protocol: what a data-holding site implements for its own data.

It lives under `fedsilo.tasks` (a Task builds a site's Trainer); `fedsilo.client.trainer`
re-exports it for code written against the site SDK.
"""

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
    weights : the new local model, one array per layer name: exactly the names, shapes
        and dtypes of the weights received (an extra, missing, reshaped or retyped layer
        is refused by the SDK, never flattened or dropped).
    num_examples : how many local examples the training used (the site's weight
        in weighted aggregation): a positive integer no larger than the count the
        site declared at the handshake (`DeclaresExamples.num_examples`).
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


@runtime_checkable
class DeclaresExamples(Protocol):
    """A `Trainer` that says how many training examples its site holds.

    The site declares this count at the handshake, signed with its key; the server
    records it in the genesis record and rejects any round reply whose ``num_examples``
    exceeds it, so that no site can outweigh the others by claiming more data than it
    declared. A site whose Trainer does not implement it (and whose `Site` sets no
    ``num_examples``) is refused at the handshake.

    Kept apart from `Trainer` so that ``isinstance(x, Trainer)`` still accepts trainers
    written before the declaration existed (they then fail at the handshake with a
    one-line reason instead of at import).
    """

    def num_examples(self) -> int:
        """The number of local training examples (a positive integer)."""
        ...


@runtime_checkable
class KeepsState(Protocol):
    """A `Trainer` with state that must outlive one message of a run, such as its own
    DP-SGD accountant.

    Flower's deployment runtime starts a fresh ClientApp process for every message (and
    a simulation may hand a node's messages to another worker), so an attribute set in
    `fit` is gone by the next round. The site keeps ``state_dict()`` in the node's
    ``context.state``, which Flower carries from message to message of the run, and
    calls ``load_state_dict`` before the Trainer's next `fit`.
    """

    def state_dict(self) -> dict[str, Any]:
        """The state, JSON-serialisable."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...

"""Contracts shared by every aggregator and server optimiser.

An `Aggregator` turns one round's `UpdateBatch` (flat float32 model deltas) into
one aggregated delta plus, per row, the fate of that site's update. A
`ServerOptimizer` applies an aggregated delta to the global model. Both are
configured by keyword parameters documented in their class-level ``params``
table, which the registry uses to parse CLI specs and to list what is installed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedsilo.common.errors import FedsiloError

from .batch import UpdateBatch


class SettingError(FedsiloError, ValueError):
    """A strategy parameter is impossible (alone or for the number of updates)."""


@dataclass(frozen=True)
class Param:
    """One documented strategy parameter.

    Parameters
    ----------
    type : the Python type values are converted to (``int``, ``float``, ``str``, ``bool``).
    default : the value used when the parameter is not given.
    help : one sentence saying what the parameter means.
    """

    type: type
    default: Any
    help: str

    def convert(self, name: str, value: Any) -> Any:
        """`value` converted to this parameter's type; `SettingError` naming `name` if it cannot."""
        if self.type is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise SettingError(f"parameter {name!r} expects a boolean (true/false), got {value!r}")
        if self.type is int and isinstance(value, float) and not value.is_integer():
            raise SettingError(f"parameter {name!r} expects an integer, got {value!r}")
        try:
            return self.type(value)
        except (TypeError, ValueError):
            raise SettingError(
                f"parameter {name!r} expects {self.type.__name__}, got {value!r}"
            ) from None


@dataclass
class AggregateResult:
    """The outcome of one aggregation.

    Parameters
    ----------
    update : the aggregated flat float32 delta (length d).
    fates : one entry per batch row: ``"accepted"``, ``"clipped"``, ``"trimmed"``,
        ``"downweighted"`` or ``"rejected:<aggregator>"``.
    scores : per-row scores when the rule has them (Krum scores, trust scores,
        Weiszfeld weights, clip factors...), else ``None``.
    info : extra facts for lineage (iterations, selected rows, ...), JSON-friendly.
    """

    update: np.ndarray
    fates: list[str]
    scores: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _Configurable:
    """Keyword configuration from a ``params`` table (shared by aggregators and optimisers)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            accepted = ", ".join(self.params) or "none"
            raise SettingError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; accepted: {accepted}"
            )
        for key, spec in self.params.items():
            value = params.get(key, spec.default)
            setattr(self, key, spec.convert(key, value) if value is not None else None)
        self.check_params()

    def check_params(self) -> None:
        """Raise `SettingError` naming the parameter when a value is out of range."""

    def config(self) -> dict[str, Any]:
        """The resolved parameters (for lineage and the genesis record)."""
        return {key: getattr(self, key) for key in self.params}

    def __repr__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.config().items())
        return f"{self.name}:{args}" if args else self.name


def require(condition: bool, message: str) -> None:
    """Raise `SettingError(message)` unless `condition` holds."""
    if not condition:
        raise SettingError(message)


class Aggregator(_Configurable, ABC):
    """Turns an `UpdateBatch` of deltas into one delta.

    Subclasses set ``name``, ``summary``, ``params`` and ``sum_only`` (True only when
    the weighted sum of the updates suffices, so the rule can run under secure
    aggregation, where the server sees nothing else). They read what they need from
    the batch (``batch.weighted_mean``, ``batch.gram``, ``batch.median``...), which
    computes each reduction once; they declare nothing about precomputation.
    """

    sum_only: ClassVar[bool] = False
    # The old spelling of ``not sum_only``, still honoured for plug-ins that set it.
    needs_individual_updates: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "needs_individual_updates" in own and "sum_only" not in own:
            cls.sum_only = not own["needs_individual_updates"]  # a plugin of the old spelling
        cls.needs_individual_updates = not cls.sum_only

    states_tolerance: ClassVar[bool] = False
    """True when the rule guarantees something against up to `tolerance` attackers
    (its ``f``, its trimming fraction, its breakdown point); a simulation with more
    attackers is then refused unless the operator allows the overreach."""

    def tolerance(self, n: int) -> int:
        """How many of ``n`` sampled updates may be adversarial within the rule's guarantee.

        The default is 0: a rule that states no robustness guarantee tolerates no attacker.
        """
        return 0

    def tolerance_text(self, n: int) -> str:
        """One phrase saying where the tolerance comes from (for error messages and lineage)."""
        return "it states no robustness guarantee"

    def validate(self, n_updates: int) -> None:
        """Raise `SettingError` naming the parameter if `n_updates` rows cannot be aggregated."""
        require(n_updates >= 1, f"{self.name}: needs at least 1 update, got {n_updates}")

    @abstractmethod
    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        """Aggregate the batch's rows (call `validate(batch.n)` first)."""


class ServerOptimizer(_Configurable, ABC):
    """Applies an aggregated delta to the flat global model."""

    @abstractmethod
    def step(self, model: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new flat float32 model from the current one and the aggregated delta."""

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        """Optimiser state to checkpoint (empty when stateless), as copies: the server
        writes it on another thread while the next round steps the optimiser."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray | float | int]) -> None:
        """Restore state written by `state_dict`."""
        extra = sorted(set(state))
        if extra:
            raise SettingError(f"{self.name}: unexpected optimiser state keys {extra}")

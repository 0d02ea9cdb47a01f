"""fedsilo.strategies: aggregation kernels, server optimisers and their registry.

Updates are flat float32 model deltas (`UpdateBatch`); an `Aggregator` turns a batch
into one delta with a fate per site, a `ServerOptimizer` applies it to the model.
"""

from . import registry
from .base import AggregateResult, Aggregator, Param, ServerOptimizer, SettingError
from .batch import UpdateBatch
from .registry import (
    add_strategies_parser,
    aggregators,
    make_aggregator,
    make_optimizer,
    optimizers,
    parse_spec,
)

__all__ = [
    "AggregateResult",
    "Aggregator",
    "Param",
    "ServerOptimizer",
    "SettingError",
    "UpdateBatch",
    "add_strategies_parser",
    "aggregators",
    "make_aggregator",
    "make_optimizer",
    "optimizers",
    "parse_spec",
    "registry",
]

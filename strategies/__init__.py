"""fedsilo.strategies: aggregation kernels, server optimisers and their registry.

Updates are flat float32 model deltas (`UpdateBatch`); an `Aggregator` turns a batch
into one delta with a fate per site, a `ServerOptimizer` applies it to the model.

The registry's listing functions are `fedsilo.strategies.registry.aggregators()` and
`.optimizers()` (the package attributes of those names are the sub-packages).

Exports load lazily: a ClientApp needs only `fedsilo.common.codec`, and Flower's
deployment runtime starts a process per message, so importing the kernels (and scipy)
there would be paid on every message.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AggregateResult": "fedsilo.strategies.base",
    "Aggregator": "fedsilo.strategies.base",
    "Param": "fedsilo.strategies.base",
    "ServerOptimizer": "fedsilo.strategies.base",
    "SettingError": "fedsilo.strategies.base",
    "UpdateBatch": "fedsilo.strategies.batch",
    "add_strategies_parser": "fedsilo.strategies.registry",
    "make_aggregator": "fedsilo.strategies.registry",
    "make_optimizer": "fedsilo.strategies.registry",
    "parse_spec": "fedsilo.strategies.registry",
}

__all__ = sorted([*_EXPORTS, "registry"])


def __getattr__(name: str) -> Any:
    if name == "registry":
        return import_module("fedsilo.strategies.registry")
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedsilo.strategies' has no attribute {name!r}")

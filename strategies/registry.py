"""Find strategies by name: built-ins plus third-party entry points.

A spec is ``name`` or ``name:key=value,key=value`` (``trimmed_mean:beta=0.2``,
``multi_krum:f=4,m=10``). Third-party packages register classes in the entry-point
groups ``fedsilo.aggregators`` and ``fedsilo.optimizers``.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Any, TypeVar

from .aggregators import BUILTIN as BUILTIN_AGGREGATORS
from .base import Aggregator, ServerOptimizer, SettingError
from .optimizers import BUILTIN as BUILTIN_OPTIMIZERS

AGGREGATOR_GROUP = "fedsilo.aggregators"
OPTIMIZER_GROUP = "fedsilo.optimizers"

T = TypeVar("T", Aggregator, ServerOptimizer)


def parse_spec(text: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:key=value,..."`` into ``(name, {key: value})`` (values stay strings).

    Raises `SettingError` (a `ValueError`) on an empty name, a pair without ``=``,
    an empty key or a repeated key.
    """
    if not isinstance(text, str) or not text.strip():
        raise SettingError("strategy spec is empty; expected 'name' or 'name:key=value,...'")
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise SettingError(f"strategy spec {text!r} has no name; expected 'name:key=value,...'")
    params: dict[str, str] = {}
    if rest.strip():
        for pair in rest.split(","):
            key, eq, value = pair.partition("=")
            key = key.strip()
            if not eq or not key:
                raise SettingError(
                    f"strategy spec {text!r}: {pair.strip()!r} is not key=value"
                )
            if key in params:
                raise SettingError(f"strategy spec {text!r}: parameter {key!r} given twice")
            params[key] = value.strip()
    elif _:
        raise SettingError(f"strategy spec {text!r} has ':' but no parameters")
    return name, params


def _discover(group: str, base: type[T], builtin: tuple[type[T], ...]) -> dict[str, type[T]]:
    found: dict[str, type[T]] = {cls.name: cls for cls in builtin}
    for ep in entry_points(group=group):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise SettingError(
                f"entry point {ep.name!r} in {group} is {cls!r}, not a {base.__name__} subclass"
            )
        if ep.name in found and found[ep.name] is not cls:
            raise SettingError(f"entry point {ep.name!r} in {group} shadows an existing {base.__name__}")
        found[ep.name] = cls
    return found


def aggregators() -> dict[str, type[Aggregator]]:
    """Installed aggregators by name: built-ins plus the ``fedsilo.aggregators`` entry points."""
    return _discover(AGGREGATOR_GROUP, Aggregator, BUILTIN_AGGREGATORS)


def optimizers() -> dict[str, type[ServerOptimizer]]:
    """Installed server optimisers by name: built-ins plus ``fedsilo.optimizers`` entry points."""
    return _discover(OPTIMIZER_GROUP, ServerOptimizer, BUILTIN_OPTIMIZERS)


def _make(spec: str, table: dict[str, type[T]], kind: str) -> T:
    name, params = parse_spec(spec)
    if name not in table:
        raise SettingError(f"unknown {kind} {name!r}; installed: {', '.join(sorted(table))}")
    return table[name](**params)


def make_aggregator(spec: str) -> Aggregator:
    """An aggregator from a spec such as ``"trimmed_mean:beta=0.2"``."""
    return _make(spec, aggregators(), "aggregator")


def make_optimizer(spec: str) -> ServerOptimizer:
    """A server optimiser from a spec such as ``"fedadam:eta=0.01"``."""
    return _make(spec, optimizers(), "optimizer")


def describe(cls: type[Aggregator] | type[ServerOptimizer]) -> list[str]:
    """Human-readable lines: name, summary, and each parameter with type, default and meaning."""
    lines = [f"{cls.name}  {cls.summary}"]
    if isinstance(cls, type) and issubclass(cls, Aggregator):
        tag = "sum suffices (works under secure aggregation)" if cls.sum_only \
            else "needs individual updates (not under secure aggregation)"
        lines.append(f"    [{tag}]")
    for key, p in cls.params.items():
        lines.append(f"    {key} ({p.type.__name__}, default {p.default!r}): {p.help}")
    return lines


def _list_handler(args: Any) -> int:
    out: list[str] = ["Aggregators (--aggregator NAME[:key=value,...]):"]
    for cls in aggregators().values():
        out.extend("  " + line for line in describe(cls))
    out.append("")
    out.append("Server optimisers (--optimizer NAME[:key=value,...]):")
    for cls in optimizers().values():
        out.extend("  " + line for line in describe(cls))
    print("\n".join(out))
    return 0


def add_strategies_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``fedsilo strategies``: list installed aggregators and optimisers with their parameters."""
    parser = subparsers.add_parser(
        "strategies",
        help="list installed aggregators and server optimisers with their parameters",
        description="List installed aggregators and server optimisers with their parameters.",
    )
    parser.set_defaults(handler=_list_handler)

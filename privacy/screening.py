"""Reject malformed or out-of-bound training replies before they touch the model.

`screen_reply` checks one reply's content against the reply contract::

    RecordDict({"update": ArrayRecord({"delta": <1-D float32 .npy, dim values>}),
                "metrics": MetricRecord({"num-examples": n, ...}),
                "site": ConfigRecord({"site_id", "update_digest", "data_fingerprint",
                                      "signature", "layout"})})

where ``n`` is a positive integer (an int, or a float holding an exact integer value) no
larger than the count the site declared at the handshake, nor than the configured
bound, nor than 2**53 (the largest count float64 weights hold exactly); and ``layout`` is
the model layout JSON (`ModelLayout.to_json`: layer names, shapes, dtypes, in flattening
order) the site flattened its update with, which must be the global model's.

It returns the delta as a zero-copy view of the reply's bytes, or raises
`ScreeningError` whose ``reason`` is one line fit for the lineage record, starting with
the part of the reply at fault (``"metrics: "``, ``"site: "``, ``"update: "``...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsilo.common.errors import FedsiloError

from ..common.codec import LayoutError, ModelLayout, decode_flat

REPLY_KEYS = frozenset({"update", "metrics", "site"})
SITE_KEYS = frozenset({"site_id", "update_digest", "data_fingerprint", "signature", "layout"})
MAX_EXAMPLES = 2**53
"""Largest example count accepted anywhere: float64 weights hold every integer up to it."""


class ScreeningError(FedsiloError, ValueError):
    """A reply failed screening; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ScreeningPolicy:
    """Bounds a reply must respect.

    Parameters
    ----------
    max_norm : reject a delta whose L2 norm exceeds this (None: no bound, but
        non-finite norms are always rejected).
    max_examples : reject a reply claiming more training examples than this
        (None: no bound); guards the weighted mean against inflated weights.
    allow_extra_metrics : accept metrics other than ``num-examples`` (train_loss...).
    """

    max_norm: float | None = None
    max_examples: int | None = None
    allow_extra_metrics: bool = True

    def __post_init__(self) -> None:
        if self.max_norm is not None and not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"ScreeningPolicy.max_norm must be a positive number, got {self.max_norm}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"ScreeningPolicy.max_examples must be >= 1, got {self.max_examples}")


def _keys_problem(what: str, found: set[str], expected: frozenset[str]) -> str | None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    return f"{what}: {', '.join(parts)}; expected {sorted(expected)}"


def screen_reply(
    content: RecordDict, *, dim: int, policy: ScreeningPolicy,
    declared_examples: int | None = None, layout: ModelLayout | None = None,
) -> np.ndarray:
    """The reply's flat float32 delta (zero-copy), or `ScreeningError` saying what is wrong.

    Parameters
    ----------
    content : the reply message's content.
    dim : the number of values every delta must have (the flat model size).
    policy : norm and example-count bounds.
    declared_examples : the count the site declared at the handshake (None: no declaration
        to hold it to).
    layout : the global model's layout (None: the ``layout`` field is not compared).
    """
    delta, _ = decode_reply(content, dim=dim, policy=policy,
                            declared_examples=declared_examples, layout=layout)
    with np.errstate(over="ignore"):  # an overflowed float32 norm is re-checked in float64
        sq_norm = float(np.dot(delta, delta))
    check_norm(delta, sq_norm, policy)
    return delta


def decode_reply(
    content: RecordDict, *, dim: int, policy: ScreeningPolicy,
    declared_examples: int | None = None, layout: ModelLayout | None = None,
) -> tuple[np.ndarray, float]:
    """The structural half of `screen_reply`: ``(delta, num_examples)`` without the norm check.

    Checks keys, record types, the example count, the declared layout and the delta's
    layout, and returns the delta as a zero-copy view and the count as an exact float64.
    The caller must still pass the delta's squared norm to `check_norm` (the server
    computes all norms in the same pass as the sum).
    """
    update, metrics, site = _records(content)
    problem = _keys_problem("update", set(update.keys()), frozenset({"delta"}))
    if problem:
        raise ScreeningError(problem)
    problem = _keys_problem("site", set(site.keys()), SITE_KEYS)
    if problem:
        raise ScreeningError(problem)
    n_examples = _reply_count(metrics, policy, declared_examples)
    if layout is not None:
        _check_reply_layout(site["layout"], layout)
    try:
        delta = decode_flat(update["delta"], expected_size=dim)
    except LayoutError as exc:
        raise ScreeningError(f"update: {exc}") from None
    return delta, float(n_examples)


def _records(content: RecordDict) -> tuple[ArrayRecord, MetricRecord, ConfigRecord]:
    problem = _keys_problem("reply", set(content.keys()), REPLY_KEYS)
    if problem:
        raise ScreeningError(problem)
    update, metrics, site = content["update"], content["metrics"], content["site"]
    if not isinstance(update, ArrayRecord):
        raise ScreeningError(f"reply 'update' is a {type(update).__name__}; expected ArrayRecord")
    if not isinstance(metrics, MetricRecord):
        raise ScreeningError(f"reply 'metrics' is a {type(metrics).__name__}; expected MetricRecord")
    if not isinstance(site, ConfigRecord):
        raise ScreeningError(f"reply 'site' is a {type(site).__name__}; expected ConfigRecord")
    return update, metrics, site


def _reply_count(metrics: MetricRecord, policy: ScreeningPolicy,
                 declared_examples: int | None) -> int:
    """The reply's example count, held to the site's declaration and the policy's bound."""
    if "num-examples" not in metrics:
        raise ScreeningError("metrics: missing 'num-examples'")
    if not policy.allow_extra_metrics and set(metrics.keys()) != {"num-examples"}:
        extra = sorted(set(metrics.keys()) - {"num-examples"})
        raise ScreeningError(f"metrics: unexpected {extra}; expected only ['num-examples']")
    raw = metrics["num-examples"]
    if declared_examples is not None and _above(raw, declared_examples):
        # before the type checks: a count of 1e39 is first of all above the declared one
        raise ScreeningError(f"metrics: num-examples {raw!r} exceeds the {declared_examples} "
                             "examples the site declared at the handshake")
    try:
        n = example_count(raw)
    except ValueError as exc:
        raise ScreeningError(f"metrics: num-examples {exc}") from None
    if declared_examples is not None and n > declared_examples:
        raise ScreeningError(f"metrics: num-examples {raw!r} exceeds the {declared_examples} "
                             "examples the site declared at the handshake")
    if policy.max_examples is not None and n > policy.max_examples:
        raise ScreeningError(f"metrics: num-examples {raw!r} exceeds the bound {policy.max_examples}")
    return n


def _above(value: Any, bound: int) -> bool:
    """``value > bound`` for an int or a float (NaN: False), else False."""
    return (type(value) is int or type(value) is float) and value > bound


def example_count(value: Any) -> int:
    """``value`` as an example count: an int, or a float holding an exact integer value,
    in [1, `MAX_EXAMPLES`]; ValueError otherwise, whose message completes
    ``"num-examples ..."`` (e.g. ``"must be an integer, got 0.5"``)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite positive integer, got {value!r}")
        if not value.is_integer():
            raise ValueError(f"must be an integer, got {value!r}")
        if value > MAX_EXAMPLES:  # compared as a float: 1e39 has no exact int64 form
            raise ValueError(f"{value!r} exceeds {MAX_EXAMPLES} (2**53, the largest count "
                             "float64 weights hold exactly)")
        value = int(value)
    elif type(value) is not int and not isinstance(value, np.integer):
        raise ValueError(f"must be an integer, got {value!r} ({type(value).__name__})")
    n = int(value)
    if n < 1:
        raise ValueError(f"must be a positive integer, got {n}")
    if n > MAX_EXAMPLES:
        raise ValueError(f"{n} exceeds {MAX_EXAMPLES} (2**53, the largest count float64 "
                         "weights hold exactly)")
    return n


@lru_cache(maxsize=8)
def _layout_json(layout: ModelLayout) -> str:
    return layout.to_json()


def _check_reply_layout(declared: Any, layout: ModelLayout) -> None:
    """`ScreeningError` unless the layout a reply declares is the global model's."""
    if declared == _layout_json(layout):  # what the SDK sends: the server's own JSON
        return
    if not isinstance(declared, str):
        raise ScreeningError(f"site: layout is a {type(declared).__name__}; expected the model "
                             "layout JSON (names, shapes, dtypes)")
    try:
        got = ModelLayout.from_json(declared)
    except LayoutError as exc:
        raise ScreeningError(f"site: {exc}") from None
    problem = layout_problem(layout, got, ordered=True)
    if problem:
        raise ScreeningError(f"site: layout differs from the global model's: {problem}")


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = [repr(n) for n in names[:limit]]
    more = f", ... ({len(names)} layers)" if len(names) > limit else ""
    return "[" + ", ".join(shown) + more + "]"


def layout_problem(expected: ModelLayout, got: ModelLayout, *, ordered: bool) -> str | None:
    """What differs between a model layout and the expected one (one line), or None.

    Every layer's name, shape and dtype must match; an extra, missing or duplicated layer
    is a difference, and so is a transposed layer of the same size (its values would be
    flattened in another order). With ``ordered`` the layer order must match too (a flat
    vector is in that order); without it, order is free (the SDK flattens by name).
    """
    if not len(got.names) == len(got.shapes) == len(got.dtypes):
        return (f"layout has {len(got.names)} names, {len(got.shapes)} shapes and "
                f"{len(got.dtypes)} dtypes; expected one of each per layer")
    if len(set(got.names)) != len(got.names):
        dup = sorted({n for n in got.names if got.names.count(n) > 1})
        return f"duplicate layers {_names(dup)}"
    want = dict(zip(expected.names, zip(expected.shapes, expected.dtypes, strict=True), strict=True))
    have = dict(zip(got.names, zip(got.shapes, got.dtypes, strict=True), strict=True))
    extra = [n for n in got.names if n not in want]
    if extra:
        return f"unexpected layers {_names(extra)}; the global model has {_names(expected.names)}"
    missing = [n for n in expected.names if n not in have]
    if missing:
        return f"missing layers {_names(missing)}; the global model has {_names(expected.names)}"
    for name, (shape, dtype) in want.items():
        got_shape, got_dtype = have[name]
        if tuple(got_shape) != tuple(shape):
            flipped = " (transposed)" if tuple(got_shape) == tuple(shape)[::-1] else ""
            return (f"layer {name!r} has shape {tuple(got_shape)}{flipped}; the global "
                    f"model's is {tuple(shape)}")
        if got_dtype != dtype:
            return f"layer {name!r} has dtype {got_dtype}; the global model's is {dtype}"
    if ordered and tuple(got.names) != tuple(expected.names):
        return (f"layers in the order {_names(got.names)}; the global model's order is "
                f"{_names(expected.names)}")
    return None


def check_norm(delta: np.ndarray, sq_norm: float, policy: ScreeningPolicy) -> float:
    """The delta's L2 norm, or `ScreeningError` for non-finite values or a norm above the bound.

    ``sq_norm`` is the float32-accumulated squared norm; when it is not finite the
    delta is inspected: NaN/Inf values are rejected, and a norm that only overflowed
    float32 is recomputed in float64.
    """
    sq = float(sq_norm)
    if not math.isfinite(sq):
        if not np.isfinite(delta).all():
            bad = int(np.size(delta) - np.count_nonzero(np.isfinite(delta)))
            raise ScreeningError(f"update: {bad} non-finite values (NaN or Inf)")
        sq = float(np.dot(delta.astype(np.float64), delta.astype(np.float64)))
    norm = math.sqrt(sq)
    if policy.max_norm is not None and norm > policy.max_norm:
        raise ScreeningError(f"update: L2 norm {norm:.6g} exceeds the bound {policy.max_norm:.6g}")
    return norm

"""Reject malformed or out-of-bound training replies before they touch the model.

`screen_reply` checks one reply's content against the reply contract::

    RecordDict({"update": ArrayRecord({"delta": <1-D float32 .npy, dim values>}),
                "metrics": MetricRecord({"num-examples": n > 0, ...}),
                "site": ConfigRecord({"site_id", "update_digest", "data_fingerprint",
                                      "signature"})})

and returns the delta as a zero-copy view of the reply's bytes, or raises
`ScreeningError` whose ``reason`` is one line fit for the lineage record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..strategies.codec import LayoutError, decode_flat

REPLY_KEYS = frozenset({"update", "metrics", "site"})
SITE_KEYS = frozenset({"site_id", "update_digest", "data_fingerprint", "signature"})


class ScreeningError(ValueError):
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


def screen_reply(content: RecordDict, *, dim: int, policy: ScreeningPolicy) -> np.ndarray:
    """The reply's flat float32 delta (zero-copy), or `ScreeningError` saying what is wrong.

    Parameters
    ----------
    content : the reply message's content.
    dim : the number of values every delta must have (the flat model size).
    policy : norm and example-count bounds.
    """
    delta, _ = decode_reply(content, dim=dim, policy=policy)
    with np.errstate(over="ignore"):  # an overflowed float32 norm is re-checked in float64
        sq_norm = float(np.dot(delta, delta))
    check_norm(delta, sq_norm, policy)
    return delta


def decode_reply(
    content: RecordDict, *, dim: int, policy: ScreeningPolicy
) -> tuple[np.ndarray, float]:
    """The structural half of `screen_reply`: ``(delta, num_examples)`` without the norm check.

    Checks keys, record types, the example count and the delta's layout, and returns
    the delta as a zero-copy view. The caller must still pass the delta's squared norm
    to `check_norm` (the server computes all norms in the same pass as the sum).
    """
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
    problem = _keys_problem("update", set(update.keys()), frozenset({"delta"}))
    if problem:
        raise ScreeningError(problem)
    problem = _keys_problem("site", set(site.keys()), SITE_KEYS)
    if problem:
        raise ScreeningError(problem)
    if "num-examples" not in metrics:
        raise ScreeningError("metrics: missing 'num-examples'")
    if not policy.allow_extra_metrics and set(metrics.keys()) != {"num-examples"}:
        extra = sorted(set(metrics.keys()) - {"num-examples"})
        raise ScreeningError(f"metrics: unexpected {extra}; expected only ['num-examples']")
    n_examples = metrics["num-examples"]
    if isinstance(n_examples, list) or not (
        math.isfinite(float(n_examples)) and float(n_examples) > 0
    ):
        raise ScreeningError(f"metrics: num-examples must be a positive number, got {n_examples!r}")
    if policy.max_examples is not None and float(n_examples) > policy.max_examples:
        raise ScreeningError(
            f"metrics: num-examples {n_examples} exceeds the bound {policy.max_examples}"
        )
    try:
        delta = decode_flat(update["delta"], expected_size=dim)
    except LayoutError as exc:
        raise ScreeningError(f"update: {exc}") from None
    return delta, float(n_examples)


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

"""A site's reply to an ``evaluate`` message: its signed score of the global model.

The site scores the weights it received on its own held-out split (its Trainer's
``evaluate``), computes the digest of those weights itself, and signs (run id, round,
model digest, loss, metrics, example count) with its key
(`fedsilo.lineage.signing.sign_evaluation`), so that the per-site metrics the server
records in lineage are the site's own statement about that exact model.

The reply carries the evaluation twice: as a ``site`` ConfigRecord holding the signed
fields as canonical JSON (the server checks the signature over exactly those values:
no float or int conversion on the way can break it) and as a ``metrics`` MetricRecord
(``loss``, ``num-examples`` and the metrics) for Flower-style consumers. A result the
SDK cannot send (a non-finite loss, a metric that is not a number...) is a ``refusal``
with a one-line reason; the server leaves that site out of the round's evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedsilo import lineage
from fedsilo.common import codec
from fedsilo.common.errors import FedsiloError
from fedsilo.common.protocol import Refusal
from fedsilo.lineage.signing import sign_evaluation

EVALUATION_KEY = "evaluation"
"""Key of the canonical JSON evaluation in the reply's ``site`` ConfigRecord."""


class EvaluationError(FedsiloError, ValueError):
    """The Trainer's evaluation result cannot be sent as it is; one line."""


def checked_evaluation(result: Any) -> tuple[float, int, dict[str, float]]:
    """(loss, num_examples, metrics) of an `EvalResult`, as plain finite floats and an int
    >= 0; `EvaluationError` naming the first field that is not."""
    loss = _number(getattr(result, "loss", None), "loss")
    n = getattr(result, "num_examples", None)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or int(n) < 0:
        raise EvaluationError(f"num_examples must be an int >= 0, got {n!r:.60}")
    metrics = getattr(result, "metrics", None) or {}
    if not isinstance(metrics, Mapping):
        raise EvaluationError(f"metrics must be a mapping name -> number, got "
                              f"{type(metrics).__name__}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name or name in ("loss", codec.NUM_EXAMPLES_KEY):
            raise EvaluationError(f"metric name {name!r:.60} is not allowed (a non-empty str "
                                  "other than 'loss' and 'num-examples')")
        out[name] = _number(value, f"metric {name!r}")
    return loss, int(n), out


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise EvaluationError(f"{what} must be a number, got {value!r:.60}")
    out = float(value)
    if not np.isfinite(out):
        raise EvaluationError(f"{what} must be finite, got {out}")
    return out


def evaluation_content(site: Any, weights: dict[str, np.ndarray],
                       config: Mapping[str, Any]) -> RecordDict:
    """Evaluate ``weights`` with the site's Trainer and build the (signed) reply content."""
    run_id = str(config.get("run_id", ""))
    server_round = int(config.get("server_round", 0))
    try:
        loss, n, metrics = checked_evaluation(site.trainer.evaluate(weights, config))
    except EvaluationError as exc:
        return Refusal(site.site_id, f"evaluation not sent: {exc}").to_record()
    if n == 0:  # no held-out rows at this site: no evaluation to sign (the server ignores it)
        return RecordDict({codec.METRICS_RECORD: MetricRecord({codec.NUM_EXAMPLES_KEY: 0})})
    digest = lineage.arrays_digest(weights)
    signature = (sign_evaluation(site.key, run_id, server_round, digest, loss, metrics, n)
                 if site.key is not None and run_id else "")
    body = {"model_digest": digest, "loss": loss, "num_examples": n, "metrics": metrics}
    return RecordDict({
        codec.METRICS_RECORD: MetricRecord({"loss": loss, codec.NUM_EXAMPLES_KEY: n, **metrics}),
        codec.SITE_RECORD: ConfigRecord({
            "site_id": site.site_id,
            EVALUATION_KEY: lineage.canonical_json(body).decode("utf-8"),
            "signature": signature,
        }),
    })

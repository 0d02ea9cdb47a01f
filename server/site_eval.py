"""Per-site evaluation: every ``eval_every`` rounds each sampled site scores the round's
global model on its own held-out split and signs what it reports.

Transport: one ``evaluate`` message per sampled site after the round's update is applied,
carrying the new global model (the round's ``model_out``). Piggybacking on the next
round's ``train`` message would save that round trip but scores ``model_in`` (one round
stale), never scores the final model, and under SecAgg+ would have to thread signed
metrics through the secure-aggregation stages; a separate message scores exactly the
model the round produced (the one central evaluation scores too), the final model
included, and works the same with or without SecAgg+ (the scores are plain, outside any
masked vector). Its cost is one small exchange per evaluated round (the model out, a few
numbers back).

The server keeps an evaluation only if the reply speaks for the site it was sent to,
scores the model that was sent (the site's own digest of it) and carries a valid site
signature (`fedsilo.lineage.signing.verify_evaluation`); anything else is left out of
the round's evaluations with a one-line reason (``extra.evaluation_problems``). A site
that sends none is simply absent: per-site evaluation never fails a round.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsilo.common import codec
from fedsilo.common.protocol import REFUSAL_PREFIX, Refusal
from fedsilo.lineage.records import validate_evaluation
from fedsilo.lineage.signing import verify_evaluation
from fedsilo.server.messaging import send_and_receive

EVALUATION_KEY = "evaluation"
"""Key of the canonical JSON evaluation in a reply's ``site`` record (the wire format of
`fedsilo.client.evaluation`, which the server does not import)."""
_FIELDS = frozenset({"model_digest", "loss", "num_examples", "metrics"})

LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "error", "log_loss", "brier")
"""Metric names (or name endings) for which the worst site is the highest value."""


def evaluation_due(eval_every: int, server_round: int, rounds_total: int) -> bool:
    """Whether ``server_round`` is evaluated at the sites: every ``eval_every``-th round
    and the last one (the final model); never when ``eval_every`` is 0."""
    if eval_every <= 0:
        return False
    return server_round % eval_every == 0 or server_round == rounds_total


def lower_is_better(name: str) -> bool:
    """Whether a smaller ``name`` is better (losses and errors), for the worst site."""
    return name in LOWER_IS_BETTER or name.endswith(("_loss", "_error"))


def exchange(grid: Grid, sites: Sequence[Any], content: RecordDict, *, run_id: str,
             server_round: int, model_digest: str, timeout: float | None
             ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Ask ``sites`` (`SiteInfo`) to score the model in ``content``; return the checked
    evaluations (`SiteEvaluation` dict form, in site-id order) and the sites whose reply
    was left out, with why."""
    msgs = [Message(content, dst_node_id=s.node_id, message_type=MessageType.EVALUATE)
            for s in sites]
    replies = send_and_receive(grid, msgs, timeout=timeout) if msgs else []
    by_node = {s.node_id: s for s in sites}
    counts: dict[int, int] = {}
    for r in replies:
        node = int(r.metadata.src_node_id)
        counts[node] = counts.get(node, 0) + 1
    entries: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for r in replies:
        info = by_node.get(int(r.metadata.src_node_id))
        if info is None:
            continue
        if counts[info.node_id] > 1:
            problems[info.site_id] = "more than one evaluation reply; none used"
            continue
        entry, problem = _checked(r, info, run_id, server_round, model_digest)
        if problem is not None:
            problems[info.site_id] = problem
        elif entry is not None:
            entries[info.site_id] = entry
    return [entries[s] for s in sorted(entries)], problems


def _checked(reply: Message, info: Any, run_id: str, server_round: int, model_digest: str
             ) -> tuple[dict[str, Any] | None, str | None]:
    """One reply's evaluation (or None: the site sent none) and why it is left out."""
    if reply.has_error():
        return None, f"evaluation failed at the site: {reply.error.reason:.200}"
    refusal = Refusal.from_record(reply.content)
    if refusal is not None:
        return None, f"{REFUSAL_PREFIX}{refusal.reason:.200}"
    rec = codec.record(reply.content, codec.SITE_RECORD, ConfigRecord)
    if rec is None or EVALUATION_KEY not in rec:
        return None, None  # no evaluation sent: ignored, not rejected
    if rec.get("site_id") != info.site_id:
        return None, (f"site id {rec.get('site_id')!r:.80} differs from the one announced at "
                      f"the handshake ({info.site_id!r})")
    body = _parse(rec[EVALUATION_KEY])
    if body is None:
        return None, "evaluation is not a JSON object with the expected fields"
    entry = {"site_id": info.site_id, **body, "signature": str(rec.get("signature", ""))}
    if body["model_digest"] != model_digest:
        return None, f"evaluated model {body['model_digest']!s:.80}, not the one sent"
    if not info.public_key:  # a site without a key: kept for the summary, not for lineage
        return {**entry, "signature": ""}, None
    try:
        validate_evaluation(entry, "evaluation")
    except ValueError as exc:
        return None, str(exc)
    if not verify_evaluation(info.public_key, entry["signature"], run_id, server_round,
                             body["model_digest"], body["loss"], body["metrics"],
                             body["num_examples"]):
        return None, "site signature over its evaluation does not verify"
    return entry, None


def _parse(text: Any) -> dict[str, Any] | None:
    try:
        body = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.keys() == _FIELDS else None


def summarise(evaluations: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Per-site metrics of one round with their mean and worst site, for ``rounds.jsonl``,
    ``metrics.json``, the progress display and the report (None: no evaluation).

    ``{"sites": {site: {"loss", "num_examples", <metrics>}}, "mean": {name: value},
    "worst": {name: value}, "worst_site": {name: site}}``: the mean is over sites (each
    site counts once, whatever its size: the question is how the model does at each
    site); the worst is the highest loss or error and the lowest of any other metric.
    """
    sites = {str(e["site_id"]): {"loss": float(e["loss"]), "num_examples": int(e["num_examples"]),
                                 **{k: float(v) for k, v in e["metrics"].items()}}
             for e in evaluations}
    if not sites:
        return None
    names = sorted({k for m in sites.values() for k in m if k != "num_examples"})
    mean, worst, worst_site = {}, {}, {}
    for name in names:
        values = {s: m[name] for s, m in sites.items() if name in m}
        pick = max if lower_is_better(name) else min
        site = pick(sorted(values), key=lambda s, v=values: v[s])
        mean[name] = sum(values.values()) / len(values)
        worst[name], worst_site[name] = values[site], site
    return {"sites": sites, "mean": mean, "worst": worst, "worst_site": worst_site}


def headline(summary: Mapping[str, Any] | None) -> str | None:
    """The metric shown next to accuracy: ``accuracy`` if reported, else the first other
    metric, else the loss (None: no per-site evaluation)."""
    if not summary or not summary.get("mean"):
        return None
    names = [n for n in summary["mean"] if n != "loss"]
    if "accuracy" in names:
        return "accuracy"
    return sorted(names)[0] if names else "loss"

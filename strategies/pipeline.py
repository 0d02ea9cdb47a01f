"""From reply messages to an `UpdateBatch`, and from a flat model to an `ArrayRecord`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message

from ..common.codec import ModelLayout, encode_flat
from ..privacy.screening import ScreeningError, ScreeningPolicy, check_norm, decode_reply
from .batch import UpdateBatch


def batch_from_replies(
    replies: Sequence[Message],
    *,
    dim: int,
    site_of: Mapping[int, str],
    policy: ScreeningPolicy,
    # ignored: the batch computes what its aggregator reads; kept until the server
    # stops passing them
    accumulate: bool = False,
    gram: bool = False,
    median: bool = False,
    declared_examples: Mapping[int, int] | None = None,
    layout: ModelLayout | None = None,
) -> tuple[UpdateBatch, dict[str, str]]:
    """Screen and decode one round's training replies, once.

    Parameters
    ----------
    replies : the reply messages of the round.
    dim : length of the flat model (every delta must have it).
    site_of : Flower node id -> stable site id (from the handshake); unknown nodes
        are named ``"node:<id>"``.
    policy : screening bounds.
    accumulate, gram, median : ignored. The batch computes what its aggregator reads
        (`UpdateBatch`); kept until the server stops passing them.
    declared_examples : Flower node id -> the example count that site declared at the
        handshake; a reply claiming more is rejected (a node missing from it: no bound
        but `MAX_EXAMPLES` and the policy's).
    layout : the global model's layout; a reply declaring another is rejected (None:
        not compared).

    Returns the accepted batch (zero-copy rows, weights = ``num-examples``, exact
    integers in float64) and the rejected sites with their reasons, in reply order. Error
    replies are rejected with their error reason.
    """
    declared = declared_examples or {}
    reasons: dict[int, tuple[str, str]] = {}  # reply index -> (site, reason)
    index: list[int] = []
    updates: list[np.ndarray] = []
    weights: list[float] = []
    sites: list[str] = []
    nodes: list[int] = []
    for i, msg in enumerate(replies):
        node = int(msg.metadata.src_node_id)
        site = site_of.get(node, f"node:{node}")
        if msg.has_error():
            reasons[i] = (site, f"error reply: {msg.error.reason}")
            continue
        try:
            delta, weight = decode_reply(msg.content, dim=dim, policy=policy,
                                         declared_examples=declared.get(node), layout=layout)
        except ScreeningError as exc:
            reasons[i] = (site, exc.reason)
            continue
        index.append(i)
        updates.append(delta)
        weights.append(weight)
        sites.append(site)
        nodes.append(node)

    batch = UpdateBatch(updates=updates, weights=weights, site_ids=sites, node_ids=nodes)
    keep = []
    for k, (i, delta, site) in enumerate(zip(index, updates, sites, strict=True)):
        try:  # the norms are the batch's: an aggregator that needs them reuses them
            check_norm(delta, batch.sq_norms[k], policy)
            keep.append(k)
        except ScreeningError as exc:
            reasons[i] = (site, exc.reason)
    rejected = {site: reason for _, (site, reason) in sorted(reasons.items())}
    return batch.subset(keep), rejected


def encode_model(flat: np.ndarray) -> ArrayRecord:
    """``ArrayRecord({"model": encode_flat(flat)})``: the one encode per round."""
    return ArrayRecord({"model": encode_flat(flat)})

"""From reply messages to an `UpdateBatch`, and from a flat model to an `ArrayRecord`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message

from ..privacy.screening import ScreeningError, ScreeningPolicy, screen_reply
from .batch import UpdateBatch
from .codec import encode_flat
from .kernels import axpy, single_threaded_blas


def batch_from_replies(
    replies: Sequence[Message],
    *,
    dim: int,
    site_of: Mapping[int, str],
    policy: ScreeningPolicy,
    accumulate: bool = False,
) -> tuple[UpdateBatch, dict[str, str]]:
    """Screen and decode one round's training replies, once.

    Parameters
    ----------
    replies : the reply messages of the round.
    dim : length of the flat model (every delta must have it).
    site_of : Flower node id -> stable site id (from the handshake); unknown nodes
        are named ``"node:<id>"``.
    policy : screening bounds.
    accumulate : also add ``num-examples * delta`` of each accepted reply into
        ``batch.weighted_sum`` right after screening it, while the row is in cache
        (for sum-only aggregators such as the weighted mean: one pass over the bytes).

    Returns the accepted batch (zero-copy rows, weights = ``num-examples``) and the
    rejected sites with their reasons. Error replies are rejected with their error reason.
    """
    updates: list[np.ndarray] = []
    weights: list[float] = []
    site_ids: list[str] = []
    node_ids: list[int] = []
    rejected: dict[str, str] = {}
    total = np.zeros(dim, dtype=np.float32) if accumulate else None
    with single_threaded_blas():  # memory-bound dot/axpy per row
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            site = site_of.get(node, f"node:{node}")
            if msg.has_error():
                rejected[site] = f"error reply: {msg.error.reason}"
                continue
            try:
                delta = screen_reply(msg.content, dim=dim, policy=policy)
            except ScreeningError as exc:
                rejected[site] = exc.reason
                continue
            weight = float(msg.content["metrics"]["num-examples"])
            if total is not None:
                axpy(delta, total, weight)
            updates.append(delta)
            weights.append(weight)
            site_ids.append(site)
            node_ids.append(node)
    batch = UpdateBatch(
        updates=updates,
        weights=np.array(weights),
        site_ids=site_ids,
        node_ids=node_ids,
        weighted_sum=total,
    )
    return batch, rejected


def encode_model(flat: np.ndarray) -> ArrayRecord:
    """``ArrayRecord({"model": encode_flat(flat)})``: the one encode per round."""
    return ArrayRecord({"model": encode_flat(flat)})

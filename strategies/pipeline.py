"""From reply messages to an `UpdateBatch`, and from a flat model to an `ArrayRecord`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, Message

from ..privacy.screening import ScreeningError, ScreeningPolicy, check_norm, decode_reply
from .batch import UpdateBatch, mean_coefficients
from .codec import ModelLayout, encode_flat
from .kernels import FUSED_MIN_VALUES, gram_and_sum_of_rows, row_dots, weighted_sum

if TYPE_CHECKING:
    from .median_kernels import MedianPass


def batch_from_replies(
    replies: Sequence[Message],
    *,
    dim: int,
    site_of: Mapping[int, str],
    policy: ScreeningPolicy,
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
    accumulate : also compute ``batch.weighted_sum`` (``sum c_i * delta_i`` over the
        accepted replies, ``c = mean_coefficients(num-examples)[0]``: the counts scaled
        below 1 in float64) in the same pass over the bytes as the norms screening
        needs (for sum-only aggregators such as the weighted mean). The pass adds every
        structurally valid reply; in the rare round where one then fails its norm check,
        the sum is recomputed without it.
    gram : compute ``batch.gram``, the inner products of the updates (for distance-based
        aggregators such as Krum), and take the screening norms from its diagonal
        instead of a separate pass. A row with NaN/Inf spoils only its own row and
        column of the matrix, which are dropped with it. The same pass gives
        ``batch.gram_sum`` (the weighted sum in float64, for Multi-Krum's mean of all
        but the rejected rows); it is dropped if a row fails its check.
    median : in large rounds (the compiled path), compute ``batch.median`` (the
        coordinate-wise median and the distances to it) and take the screening norms
        from the same pass; if a row then fails its check, the median is recomputed
        without it. Small rounds ignore it (the aggregator computes its own).
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

    w = np.array(weights, dtype=np.float64)
    G, gram_total = gram_and_sum_of_rows(updates, w) if gram else (None, None)
    med = _median_pass(updates) if median and not (gram or accumulate) else None
    if G is not None and not accumulate:
        total, sq = None, np.diag(G).copy()
    elif med is not None:
        total, sq = None, med.sq_norms
    else:
        total, sq = _norms_and_sum(updates, mean_coefficients(w)[0] if accumulate else None, dim)
    keep = []
    for k, (i, delta, site) in enumerate(zip(index, updates, sites, strict=True)):
        try:
            check_norm(delta, sq[k], policy)
            keep.append(k)
        except ScreeningError as exc:
            reasons[i] = (site, exc.reason)
    if len(keep) < len(updates):
        updates = [updates[k] for k in keep]
        sites = [sites[k] for k in keep]
        nodes = [nodes[k] for k in keep]
        w = w[keep]
        if G is not None:
            G = G[np.ix_(keep, keep)]
            gram_total = None  # it holds the rejected row (maybe NaN): not worth fixing
        if accumulate:  # the pass added a row that failed its norm check: sum again
            total = (weighted_sum(updates, mean_coefficients(w)[0]) if updates
                     else np.zeros(dim, dtype=np.float32))
        if med is not None:  # likewise the median
            med = _median_pass(updates)
    batch = UpdateBatch(updates=updates, weights=w, site_ids=sites, node_ids=nodes,
                        weighted_sum=total, gram=G, gram_sum=gram_total, median=med)
    rejected = {site: reason for _, (site, reason) in sorted(reasons.items())}
    return batch, rejected


def _median_pass(rows: list[np.ndarray]) -> MedianPass | None:
    """`median_kernels.median_pass` of a large round; None when small or empty."""
    if not rows or len(rows) * rows[0].size < FUSED_MIN_VALUES:
        return None
    from .median_kernels import median_pass  # numba: imported only when a round is large

    return median_pass(rows)


def _norms_and_sum(
    rows: list[np.ndarray], coeffs: np.ndarray | None, dim: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Squared norms of the rows and (with ``coeffs``) their weighted sum.

    Large rounds use the compiled single-pass kernel; small ones (where compiling it
    would cost more than it saves) a BLAS dot and a weighted sum per row.
    """
    if len(rows) * dim >= FUSED_MIN_VALUES:
        from .fused import screen_and_sum  # numba: imported only when a round is large

        return screen_and_sum(rows, coeffs, dim=dim)
    if coeffs is None:
        return None, row_dots(rows)
    total = weighted_sum(rows, coeffs) if rows else np.zeros(dim, dtype=np.float32)
    return total, row_dots(rows)


def encode_model(flat: np.ndarray) -> ArrayRecord:
    """``ArrayRecord({"model": encode_flat(flat)})``: the one encode per round."""
    return ArrayRecord({"model": encode_flat(flat)})

"""k-regular Harary-style communication graph over the round's participants.

Participants are placed on a ring in an order every party can recompute (sorted by
SHA-256 of run id, round and node id, so neither the server nor node-id choice
decides who neighbours whom), and each is linked to the k/2 nearest on each side;
an odd k adds the diametrically opposite node (n even). k >= n - 1 is the complete
graph, i.e. the original SecAgg.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def ring_order(node_ids: Sequence[int], run_id: str, server_round: int) -> list[int]:
    """Participants in ring order (deterministic from run id, round and node ids)."""
    def key(nid: int) -> bytes:
        return hashlib.sha256(
            f"fedsilo/secagg/v1|ring|{run_id}|{server_round}|{nid}".encode()
        ).digest()

    return sorted(node_ids, key=key)


def harary(
    node_ids: Sequence[int], degree: int, run_id: str, server_round: int
) -> dict[int, list[int]]:
    """Neighbour lists (sorted node ids) of the k-regular graph over ``node_ids``.

    Parameters
    ----------
    node_ids:
        Distinct participant node ids.
    degree:
        k, already resolved by `SecAggConfig.resolve` (k <= n - 1; k even or n even).
    run_id, server_round:
        Seed the ring order.
    """
    n = len(node_ids)
    if not 1 <= degree <= n - 1 or (degree % 2 == 1 and n % 2 == 1):
        raise ValueError(f"secagg.degree: no {degree}-regular graph on {n} nodes")
    order = np.array(ring_order(node_ids, run_id, server_round), dtype=np.uint64)
    half = degree // 2
    offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    if degree % 2 == 1:
        offsets = np.append(offsets, n // 2)
    idx = (np.arange(n)[:, None] + offsets[None, :]) % n  # n x k neighbour positions
    nbrs = np.sort(order[idx], axis=1)
    return {int(a): nbrs[i].tolist() for i, a in enumerate(order.tolist())}

"""k-regular Harary-style communication graph over the round's participants.

Participants are placed on a ring in an order every party can recompute (sorted by
SHA-256 of run id, round and node id, so neither the server nor node-id choice
decides who neighbours whom), and each is linked to the k/2 nearest on each side;
an odd k adds the diametrically opposite node (n even). k >= n - 1 is the complete
graph, i.e. the original SecAgg.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np


def ring_order(node_ids: Sequence[int], run_id: str, server_round: int) -> list[int]:
    """Participants in ring order (deterministic from run id, round and node ids)."""
    return list(_ring_order(tuple(node_ids), run_id, server_round))


# A process that hosts many sites (the in-process grid, a Ray actor of Flower's simulation
# engine) would otherwise hash the same n ids once per site and round, 0.1 ms each at n=100.
@functools.lru_cache(maxsize=8)
def _ring_order(node_ids: tuple[int, ...], run_id: str, server_round: int) -> tuple[int, ...]:
    # hash the common prefix once; each node id only extends a copy of that state
    base = hashlib.sha256(f"fedsilo/secagg/v1|ring|{run_id}|{server_round}|".encode())

    def key(nid: int) -> bytes:
        h = base.copy()
        h.update(str(nid).encode())
        return h.digest()

    return tuple(sorted(node_ids, key=key))


def _offsets(n: int, degree: int) -> np.ndarray:
    """Ring offsets of a node's neighbours in the k-regular graph on n nodes."""
    if not 1 <= degree <= n - 1 or (degree % 2 == 1 and n % 2 == 1):
        raise ValueError(f"secagg.degree: no {degree}-regular graph on {n} nodes")
    half = degree // 2
    offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    if degree % 2 == 1:
        offsets = np.append(offsets, n // 2)
    return offsets


def neighbours(node_ids: Sequence[int], degree: int, run_id: str, server_round: int,
               node: int) -> list[int]:
    """Sorted neighbour list of ``node`` in `harary` (``node_ids``, ...), without the rest.

    A site needs only its own row; building the whole graph costs it O(n) more work.
    Raises ValueError if ``node`` is not among ``node_ids``.
    """
    offsets = _offsets(len(node_ids), degree)
    order = ring_order(node_ids, run_id, server_round)
    pos = order.index(node)
    return sorted(order[i] for i in ((pos + offsets) % len(order)).tolist())


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
    offsets = _offsets(n, degree)
    order = np.array(ring_order(node_ids, run_id, server_round), dtype=np.uint64)
    idx = (np.arange(n)[:, None] + offsets[None, :]) % n  # n x k neighbour positions
    nbrs = np.sort(order[idx], axis=1)
    return {int(a): nbrs[i].tolist() for i, a in enumerate(order.tolist())}

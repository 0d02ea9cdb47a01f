"""Each plain reply's update digest, computed while the other sites are still training.

Why: the verify step checks every site's signature over the SHA-256 digest of its update
(`fedsilo.lineage.update_digest`). Computed one after another once every reply is in,
those digests cost about 110 ms at 50 sites x 10^6 parameters, several times the
aggregation itself, and all of it on the critical path from the last reply to the new
model. Replies arrive over seconds (over time in simulation too), so `ReplyDigests`
hashes each one as `fedsilo.server.messaging.send_and_receive` pulls it, on a small
thread pool (hashlib releases the GIL on large buffers): when the last reply arrives,
only its own digest remains. The digest is unchanged (same function, same bytes), so the
lineage format and `lineage verify` are untouched; a faster digest would change both.

The digest is taken over the reply's own bytes through `fedsilo.common.codec.decode_flat`
(a zero-copy view, the same one the verify step aggregates), never over a second decoded
copy. `digest_of` hands a digest out only for exactly the memory the caller is about to
aggregate, so a precomputed digest can never stand for other bytes. A reply that cannot
be hashed (an error reply, a malformed record, a node that replied twice) has no
precomputed digest: the caller digests the update itself or the normal screening rejects
the reply with its reason; nothing raises in a worker.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedsilo import lineage
from fedsilo.common.codec import DELTA_KEY, UPDATE_RECORD, decode_flat
from fedsilo.common.cpus import usable_cpus

MAX_WORKERS = 2
"""Hashing threads at most: SHA-256 runs at memory speed, more threads only contend."""

_Hashed = tuple[str, np.ndarray] | None  # (digest, the view hashed), or None: not hashable
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, workers) -> pool
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's hashing pool of ``workers`` threads, made on first use and kept: one
    per round would start threads every round and wake them to stop on the critical path
    (a few ms of GIL hand-over at the end of the verify step). Keyed by process id too: a
    forked child inherits the parent's pool object but not its threads."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="fedsilo-digest")
        return pool


def _hash(message: Message) -> _Hashed:
    """(digest, the zero-copy view it covers) of ``message``'s update; None when the
    reply holds no well-formed flat update (screening will say why)."""
    try:
        if message.has_error():
            return None
        record = message.content.get(UPDATE_RECORD)
        if not isinstance(record, ArrayRecord) or DELTA_KEY not in record:
            return None
        array = record[DELTA_KEY]
        if not isinstance(array, Array):
            return None
        flat = decode_flat(array)
        return lineage.update_digest(flat), flat
    except Exception:  # noqa: BLE001 - a malformed reply must not fail the pool; screening reports it
        return None


class ReplyDigests:
    """Update digests of one round's plain replies, computed as the replies arrive.

    Use as a context manager (or call `close`) for one round: `submit` each reply as it
    is pulled (the ``on_reply`` hook of `send_and_receive`), then `digest_of` each
    accepted update in the verify step. The threads are the process's, shared by rounds
    (and by concurrent runs in one process); `close` drops this round's jobs not started.

    Parameters
    ----------
    workers : hashing threads (default: up to `MAX_WORKERS`, no more than the usable CPUs).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers if workers is not None else min(MAX_WORKERS, usable_cpus()))
        # node id -> its reply's digest job; None: the node replied more than once
        self._jobs: dict[int, Future[_Hashed] | None] = {}

    def submit(self, message: Message) -> None:
        """Start hashing ``message``'s update (returns at once; never raises for a bad reply)."""
        try:
            node = int(message.metadata.src_node_id)
        except (AttributeError, TypeError, ValueError):
            return
        if node in self._jobs:  # a duplicated reply: which bytes to trust cannot be told
            job = self._jobs[node]
            if job is not None:
                job.cancel()
            self._jobs[node] = None
            return
        try:
            self._jobs[node] = _pool(self.workers).submit(_hash, message)
        except RuntimeError:  # the interpreter is shutting down: the verify step digests it
            self._jobs[node] = None

    def digest_of(self, node_id: int, flat: np.ndarray) -> str | None:
        """The digest of node ``node_id``'s update, waiting for it if still being computed.

        ``flat`` is the update the caller is about to aggregate: the digest is returned only
        if it was computed over exactly that memory (same buffer, dtype and length), else
        None (not submitted, duplicated, malformed, or other bytes), and the caller
        computes `fedsilo.lineage.update_digest` itself.
        """
        job = self._jobs.get(node_id)
        if job is None or job.cancelled():
            return None
        hashed = job.result()
        if hashed is None:
            return None
        digest, view = hashed
        same = (isinstance(flat, np.ndarray) and flat.dtype == view.dtype
                and flat.shape == view.shape and flat.strides == view.strides
                and flat.__array_interface__["data"][0] == view.__array_interface__["data"][0])
        return digest if same else None

    def close(self) -> None:
        """Drop this round's jobs not started yet (replies the verify step did not need);
        none is waited for."""
        for job in self._jobs.values():
            if job is not None:
                job.cancel()

    def __enter__(self) -> ReplyDigests:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

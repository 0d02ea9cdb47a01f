"""Regenerating the masks the server must remove, serially or on several processes.

The server's unmask step regenerates one self mask per survivor and, for each dropped
site, one pairwise mask per surviving neighbour (X25519 agreement with the dropped
site's reconstructed key, HKDF, AES-128-CTR keystream). At n = 1000, k = 100 and 30%
dropout that is ~21,000 agreements and keystreams of d words: seconds of CPU.
`cryptography` holds the GIL during X25519 exchange and cipher updates (measured: two
threads take as long as one), so the work is split over processes. Each process
returns the uint32 sum of its share of the masks (a partial sum in the ring); the
server subtracts the partial sums. Wrap-around addition is associative and
commutative, so the result is bit-identical to the serial loop whatever the split.

This process takes chunks too (it is one of the ``parallelism`` processes), after it
has reconstructed the survivors' seeds and removed their self masks.

Process start-up: ``fork`` (milliseconds, no re-import) when the parent has a single
Python thread; otherwise ``forkserver`` / ``spawn`` (a few hundred milliseconds),
because forking a multi-threaded process can deadlock the child. The workers receive
the dropped sites' reconstructed mask keys (which the server holds anyway) over a
local pipe and exit at the end of the step.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import crypto

log = logging.getLogger(__name__)

PARALLEL_MIN_WORDS = 100_000_000
"""Pairwise-mask words (uint32) each process must get before another process is started:
~1000 masks at d = 10^5, ~0.1 s of work, when workers are forked (~10 ms to start);
ten times that otherwise (a forkserver / spawn worker imports numpy, `cryptography` and
the parent's main module, ~0.3-1 s)."""


@dataclass(frozen=True)
class PairJob:
    """The pairwise masks of one dropped site that survivors added to their inputs.

    sk: the dropped site's mask private key (raw 32 bytes), reconstructed and verified.
    node: the dropped site's node id.
    peers: (surviving neighbour's node id, its advertised mask public key) pairs.
    """

    sk: bytes
    node: int
    peers: tuple[tuple[int, bytes], ...]

    @property
    def size(self) -> int:
        """Number of masks this job regenerates."""
        return len(self.peers)


def pair_mask_sum(jobs: Sequence[PairJob], run_id: str, server_round: int,
                  length: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sum (uint32, wrap-around) of the pairwise masks in ``jobs`` as the survivors added them.

    Survivor j added ``+mask`` for a dropped neighbour i when j < i and ``-mask`` when
    j > i (see `SecAggClient.masked_input`), so subtracting this sum removes them.

    Parameters
    ----------
    jobs:
        The dropped sites and their surviving neighbours.
    run_id, server_round:
        Round identity bound into each pair's HKDF ``info`` (as the sites derived it).
    length:
        Mask length in uint32 words (d + 2).
    out:
        Optional uint32 accumulator of that length to add the sum to (and return).
    """
    acc = np.zeros(length, dtype=np.uint32) if out is None else out
    gen = crypto.MaskGenerator(length)
    parsed: dict[bytes, object] = {}  # survivors neighbour many dropped sites: parse once
    for job in jobs:
        sk = crypto.private_key(job.sk)
        seeds = []
        for j, raw in job.peers:
            pk = parsed.get(raw)
            if pk is None:
                pk = parsed[raw] = crypto.public_key(raw)
            seeds.append(crypto.agree(sk, pk, purpose=b"mask", run_id=run_id,  # type: ignore[arg-type]
                                      server_round=server_round, node_a=job.node, node_b=j))
        gen.add_masks(acc, seeds, [j > job.node for j, _ in job.peers])
    return acc


def self_mask_sum(seeds: Sequence[bytes], length: int) -> np.ndarray:
    """Sum (uint32, wrap-around) of the self masks expanded from ``seeds``."""
    return crypto.MaskGenerator(length).add_masks(np.zeros(length, dtype=np.uint32), seeds,
                                                  [False] * len(seeds))


def remove_self_masks(acc: np.ndarray, seeds: Sequence[bytes]) -> np.ndarray:
    """Subtract the self masks expanded from ``seeds`` from ``acc`` in place (uint32 ring).

    The same result as ``acc -= self_mask_sum(seeds, acc.size)`` without the second
    d-length accumulator and its extra pass.
    """
    return crypto.MaskGenerator(acc.size).add_masks(acc, seeds, [True] * len(seeds))


def _context() -> mp.context.BaseContext:
    """``fork`` where it is safe and cheap (Linux, one Python thread), else a fresh process."""
    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def min_words_per_process() -> int:
    """`PARALLEL_MIN_WORDS`, or ten times it when workers cannot be forked."""
    per = max(PARALLEL_MIN_WORDS, 1)
    return per if _context().get_start_method() == "fork" else 10 * per


def split_jobs(jobs: Sequence[PairJob], parts: int) -> list[list[PairJob]]:
    """Split ``jobs`` into at most ``parts`` lists of nearly equal mask counts (in order)."""
    total = sum(j.size for j in jobs)
    out: list[list[PairJob]] = [[]]
    done = 0
    for job in jobs:
        if out[-1] and done >= total * len(out) / parts:
            out.append([])
        out[-1].append(job)
        done += job.size
    return out


# Set in each worker process by `_init_worker`: (next-chunk counter, chunks, pair_mask_sum args).
_WORK: tuple[Any, list[list[PairJob]], tuple[str, int, int]] | None = None


def _init_worker(counter: Any, chunks: list[list[PairJob]], args: tuple[str, int, int]) -> None:
    global _WORK
    _WORK = (counter, chunks, args)


def _drain(counter: Any, chunks: list[list[PairJob]], args: tuple[str, int, int]
           ) -> tuple[list[int], np.ndarray]:
    """Take chunks from the shared counter until none is left; (chunk indices, their sum)."""
    acc = np.zeros(args[2], dtype=np.uint32)
    done = []
    while True:
        with counter.get_lock():
            i = counter.value
            counter.value = i + 1
        if i >= len(chunks):
            return done, acc
        pair_mask_sum(chunks[i], *args, out=acc)
        done.append(i)


def _drain_in_worker() -> tuple[list[int], np.ndarray]:
    assert _WORK is not None, "worker not initialised"
    return _drain(*_WORK)


class PairMaskPool:
    """Regenerates pairwise masks on worker processes and in this one.

    The jobs are cut into chunks that worker processes and this process take from one
    shared counter, so each takes as many as it has time for (a process slowed by other
    load takes fewer). ``submit`` starts ``parallelism - 1`` workers; the caller keeps
    working (reconstructing seeds), then ``result`` drains the remaining chunks here and
    adds the workers' partial sums. If a worker dies, every chunk not reported done is
    recomputed here: the result is the same, only later.

    Parameters
    ----------
    parallelism:
        Processes sharing the work, this one included (>= 2).
    chunks_per_process:
        Chunks per process: finer chunks even out the finish (each process returns one
        partial sum, whatever the number of chunks it took).
    """

    def __init__(self, parallelism: int, chunks_per_process: int = 16) -> None:
        if parallelism < 2:
            raise ValueError(f"parallelism: expected >= 2, got {parallelism}")
        self.workers, self.n_chunks = parallelism - 1, parallelism * chunks_per_process
        self._ex: ProcessPoolExecutor | None = None
        self._futures: list[Future[tuple[list[int], np.ndarray]]] = []
        self._chunks: list[list[PairJob]] = []
        self._counter: Any = None
        self._args: tuple[str, int, int] = ("", 0, 0)
        self.local_chunks = 0  # chunks computed in this process (for tests and benchmarks)

    def submit(self, jobs: Sequence[PairJob], run_id: str, server_round: int,
               length: int) -> None:
        """Start the workers on ``jobs`` (see `pair_mask_sum` for the parameters)."""
        ctx = _context()
        self._args = (run_id, server_round, length)
        self._chunks = split_jobs(jobs, self.n_chunks)
        self._counter = ctx.Value("i", 0)
        self._ex = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(self._counter, self._chunks, self._args))
        self._futures = [self._ex.submit(_drain_in_worker) for _ in range(self.workers)]

    def result(self) -> np.ndarray:
        """Sum of all chunks' partial sums (this process takes chunks too)."""
        try:
            done, acc = _drain(self._counter, self._chunks, self._args)
            self.local_chunks = len(done)
            finished = set(done)
            worker_sums = []
            for fut in self._futures:
                try:
                    idx, part = fut.result()
                except BrokenProcessPool:
                    continue
                finished.update(idx)
                worker_sums.append(part)
            lost = [i for i in range(len(self._chunks)) if i not in finished]
            if lost:  # a worker died: its chunks (and its partial sum) are redone here
                log.warning("secagg unmask: a worker process died; regenerating %d chunks of "
                            "masks in this process", len(lost))
                for i in lost:
                    pair_mask_sum(self._chunks[i], *self._args, out=acc)
                self.local_chunks += len(lost)
            for part in worker_sums:
                acc += part
        finally:
            self.close()
        return acc

    def close(self) -> None:
        """Stop the workers and wait for them to exit (idempotent).

        Called early (the round aborted), it lets each worker finish only its current chunk.
        """
        if self._counter is not None:
            with self._counter.get_lock():
                self._counter.value = len(self._chunks)
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None
        self._futures = []

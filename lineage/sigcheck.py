"""The signature side of ``lineage verify``: Ed25519 checks on a thread pool.

Signatures are the dominant cost of verification (one Ed25519 check per contribution, per
evaluation, per SecAgg+ unmask reply and per record), so the chain walk
(:mod:`fedsilo.lineage.chaincheck`) only queues them here, in chunks, while it goes on
parsing; ``cryptography`` releases the GIL while verifying, so the pool's threads run in
parallel with the walk. The first failure (lowest record number) is reported at the end.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_CHUNK = 2048

#: one signature to check: (seq, record label, what failed if invalid, public key,
#: signature bytes, signed message)
Job = tuple[int, str, str, Ed25519PublicKey, bytes, bytes]


class Failure(Exception):
    """The first thing wrong with a chain: record ``seq`` (its label) and what failed."""

    def __init__(self, seq: int, label: str, what: str) -> None:
        super().__init__(f"record {seq} ({label}): {what}")
        self.seq = seq


class SignaturePool:
    """Queued signature checks, run in chunks on a thread pool.

    Args:
        workers: checking threads (default: ``os.cpu_count()``).
    """

    def __init__(self, workers: int | None) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
        self.futures: list[Future[tuple[int, str] | None]] = []
        self.jobs: list[Job] = []

    def queue(self, job: Job) -> None:
        """Add one check; a full chunk goes to the pool at once."""
        self.jobs.append(job)
        if len(self.jobs) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.jobs:
            self.futures.append(self.pool.submit(_check_signatures, self.jobs))
            self.jobs = []

    def first_failure(self) -> Failure | None:
        """Wait for every queued check; the failure of the lowest record, or None."""
        self._flush()
        found = [f for f in (future.result() for future in self.futures) if f is not None]
        if not found:
            return None
        seq, message = min(found)
        label, what = message.split("\x00", 1)
        return Failure(seq, label, what)

    def shutdown(self) -> None:
        """Stop the threads (pending chunks are cancelled)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_signatures(jobs: list[Job]) -> tuple[int, str] | None:
    """Verify a chunk of signatures; return the first failure as (seq, label\\0what)."""
    for seq, label, what, public, signature, message in jobs:
        try:
            public.verify(signature, message)
        except InvalidSignature:
            return seq, f"{label}\x00{what}"
    return None

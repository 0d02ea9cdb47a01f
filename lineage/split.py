"""Two processes for one long chain: ``lineage verify`` checks its back half in a child.

Default-mode verification is single-threaded Python (parse, digests, links: no signature
pool to hide it), so a long chain is cut at a *seam* ``k``. This process checks records
``[0, k)`` as always, while a child forked after the genesis record checks ``[k, n)`` with a
:class:`SeamChecker`. The child cannot know the state the chain is in at the seam (the
model, the last round, each site's attestation head), so it *assumes* the values the
records after the seam name (the first round's ``model_in``, each site's first ``prev``)
and reports them with its end state. The parent then checks each assumption against its
own state at the seam; when all hold, the child's walk is the one this process would have
made, and its end state is adopted. Anything else (a failure in the child, an assumption
that does not hold, a closing record before the seam) and the parent checks ``[k, n)``
itself: the verdict and the first failure named are always those of the one-process walk.

The child knows the sites, from the genesis record and from the ``site_join`` records
before the seam (parsed here before forking; if one of them is not what it seems, the
parent's own walk fails on it before the seam). A ``resume`` record needs the model history
before the seam, so the seam is put after the last one.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from multiprocessing.connection import Connection
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .chaincheck import ChainChecker, Row
from .keys import load_public_key
from .sigcheck import Failure
from .signing import GENESIS_ATTESTATION
from .store import parse_json

#: chains with fewer signed bytes are checked in one process (a fork costs ~10-50 ms)
MIN_SPLIT_BYTES = 16 << 20


@dataclass
class BackHalf:
    """What the child found after the seam: its end state and what it assumed.

    Attributes:
        seam_prev: the record digest the child took as record ``k - 1``'s.
        assumed_model: the model it took the chain to be at (None: no model named).
        first_round: its first round number (None: no round record).
        assumed_heads: site id -> the attestation head it took the site to have.
        current, last_round, closing, closed_at, last_label, rounds, site_signatures:
            its end state (``current`` None: no model named after the seam).
        attested: site id -> head of the site's attestation chain at the end.
        heads: site id -> (record, contribution, signed message) of the site's last
            chained attestation (default mode checks its signature at the end).
        head_job: (record, label, what, signature, digest) of the last record's server
            signature.
        added_sites: site id -> (public key hex, first round) of sites joined after the seam.
    """

    seam_prev: str
    assumed_model: str | None
    first_round: int | None
    assumed_heads: dict[str, str]
    current: str | None
    last_round: int
    closing: dict[str, Any] | None
    closed_at: int
    last_label: str
    rounds: int
    site_signatures: int
    attested: dict[str, str]
    heads: dict[str, tuple[int, dict[str, Any], bytes]]
    head_job: tuple[int, str, str, bytes, bytes] | None
    added_sites: dict[str, tuple[str, int]]


_UNKNOWN = "<the model at the seam>"  # never a digest: every model named is one


class SeamChecker(ChainChecker):
    """A :class:`ChainChecker` for the records after the seam, started from the genesis
    state of ``front`` and the sites known at the seam; what it cannot know it assumes.

    Args:
        front: the parent's checker after the genesis record.
        sites: site id -> (public key, first round) of every site known at the seam.
    """

    def __init__(self, front: ChainChecker,
                 sites: dict[str, tuple[Ed25519PublicKey, int]]) -> None:
        super().__init__(front.n, front.check_sites, front.expected_server_key, 1, False)
        self.server, self.server_hex = front.server, front.server_hex
        self.run_id, self._run_id_json = front.run_id, front._run_id_json
        self.initial = front.initial
        self.sites = dict(sites)
        self.current = _UNKNOWN
        self.assumed_model: str | None = None
        self.first_round: int | None = None
        self.assumed_heads: dict[str, str] = {}
        self.added_sites: dict[str, tuple[str, int]] = {}

    def _round(self, i: int, body: dict[str, Any], columns: Any = None) -> None:
        if self.current is _UNKNOWN:
            self.assumed_model = self.current = body["model_in"]
        if self.first_round is None:
            self.first_round = body["round"]
        ids = None if columns is None else set(columns.ids)
        if ids is None or not ids <= self.attested.keys():  # a site seen the first time
            for c in body["contributions"]:
                if c.get("prev") is not None and c["site_id"] not in self.attested:
                    self.attested[c["site_id"]] = self.assumed_heads[c["site_id"]] = c["prev"]
        super()._round(i, body, columns)

    def _closing(self, i: int, body: dict[str, Any]) -> None:
        if self.current is _UNKNOWN and body["final_model_digest"] is not None:
            self.assumed_model = self.current = body["final_model_digest"]
        super()._closing(i, body)

    def _resume(self, i: int, body: dict[str, Any]) -> None:
        raise Failure(i, "resume", "a resume needs the model history before the seam")

    def _add_site(self, i: int, label: str, site: dict[str, Any], from_round: int) -> None:
        super()._add_site(i, label, site, from_round)
        self.added_sites[site["site_id"]] = (site["public_key"], from_round)

    def back_half(self, seam_prev: str) -> BackHalf:
        """The end state and assumptions, to send to the parent."""
        job = self._head_job
        return BackHalf(
            seam_prev, self.assumed_model, self.first_round, self.assumed_heads,
            None if self.current is _UNKNOWN else self.current, self.last_round,
            self.closing, self.closed_at, self.last_label, self.rounds, self.site_signatures,
            self.attested,
            {s: (h[0], h[3], h[4]) for s, h in self.chain_heads.items()},
            None if job is None else (job[0], job[1], job[2], job[4], job[5]),
            self.added_sites,
        )


def choose_seam(rows: Sequence[Row], min_bytes: int = MIN_SPLIT_BYTES) -> int | None:
    """Where to cut: half the signed bytes, after the last resume record; None: one
    process (fewer than ``min_bytes`` signed bytes, or no record left after the seam)."""
    sizes = [len(row[4]) if isinstance(row[4], str) else 0 for row in rows]
    total = sum(sizes)
    if total < min_bytes:
        return None
    k = bisect_left(list(accumulate(sizes)), total // 2) + 1
    resumes = [i for i, row in enumerate(rows) if row[1] == "resume"]
    k = max(k, resumes[-1] + 1 if resumes else 0, 2)
    return k if k < len(rows) else None


def can_fork() -> bool:
    """Whether a child may be forked here: POSIX fork, 2+ cores, and no other Python
    thread (a fork copies only the calling thread; a lock another one holds would stay
    held). Threads a C library keeps idle (OpenBLAS's pool) do not matter: the child
    only parses, hashes and compares."""
    return ("fork" in multiprocessing.get_all_start_methods()
            and (os.cpu_count() or 1) >= 2 and threading.active_count() == 1
            and not multiprocessing.current_process().daemon)  # may not have children


class Child:
    """The forked child checking ``rows[k:]`` (after the parent checked the genesis).

    Args:
        front: the parent's checker after the genesis record (forked with its state).
        rows: every row (shared with the child by the fork, not copied or pickled).
        k: the seam.
    """

    def __init__(self, front: ChainChecker, rows: Sequence[Row], k: int) -> None:
        sites = _sites_at_seam(front, rows, k)
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_check_back_half,
                                         args=(front, sites, rows, k, send), daemon=True)
        self._process.start()
        send.close()

    def result(self) -> BackHalf | None:
        """Wait for the child; its back half, or None (it found a failure or stopped)."""
        try:
            back = self._receive.recv()
        except (EOFError, OSError):
            back = None
        self._receive.close()
        self._process.join()
        return back

    def cancel(self) -> None:
        """Stop the child (the parent failed before the seam, or checks the rest itself)."""
        self._receive.close()
        if self._process.is_alive():
            self._process.kill()
        self._process.join()


def _sites_at_seam(front: ChainChecker, rows: Sequence[Row],
                   k: int) -> dict[str, tuple[Ed25519PublicKey, int]] | None:
    """The sites known at the seam: the genesis ones and those of the ``site_join`` rows
    before it (None if one cannot be read: the parent's walk then fails on it)."""
    sites = dict(front.sites)
    try:
        for row in rows[1:k]:
            if row[1] == "site_join":
                body = parse_json(row[4])["body"]
                site = body["site"]
                sites[site["site_id"]] = (load_public_key(site["public_key"]), body["round"])
    except Exception:  # noqa: BLE001 (anything odd: the parent's own walk names it)
        return None
    return sites


def _check_back_half(front: ChainChecker, sites: dict[str, tuple[Ed25519PublicKey, int]] | None,
                     rows: Sequence[Row], k: int, send: Connection) -> None:
    """In the child: walk ``rows[k:]``, send the :class:`BackHalf`, or None on any failure
    (the parent then walks them itself and names it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops this child
    back = None
    try:
        if sites is not None:
            seam = SeamChecker(front, sites)
            try:
                prev = seam_prev = rows[k - 1][2]
                for i in range(k, len(rows)):
                    prev = seam.record(i, rows[i], prev)
                if seam.signatures.first_failure() is None:
                    back = seam.back_half(seam_prev)
            finally:
                seam.signatures.shutdown()
    except Exception:  # noqa: BLE001 (a Failure, or anything: the parent decides)
        back = None
    try:
        send.send(back)
        send.close()
    except OSError:  # the parent stopped listening (it failed before the seam)
        pass


def adopt(front: ChainChecker, back: BackHalf | None, prev: str | None) -> bool:
    """Take the child's end state into ``front`` (the parent's checker after ``[0, k)``,
    ``prev`` its last digest) if every assumption the child made holds; False: nothing
    changed, the parent checks the records after the seam itself."""
    if (back is None or front.closing is not None or back.seam_prev != prev
            or (back.assumed_model is not None and back.assumed_model != front.current)
            or (back.first_round is not None and back.first_round <= front.last_round)
            or any(front.attested.get(site, GENESIS_ATTESTATION) != head
                   for site, head in back.assumed_heads.items())):
        return False
    for site_id, (public_hex, from_round) in back.added_sites.items():
        front.sites[site_id] = (load_public_key(public_hex), from_round)
    if back.current is not None:
        front.current = back.current
    if back.first_round is not None:
        front.last_round = back.last_round
    front.closing, front.closed_at = back.closing, back.closed_at
    front.last_label = back.last_label
    front.rounds += back.rounds
    front.site_signatures += back.site_signatures
    front.attested.update(back.attested)
    front.chain_heads.update({site: (i, site, front.sites[site][0], c, message)
                              for site, (i, c, message) in back.heads.items()})
    if back.head_job is not None:
        i, label, what, signature, digest = back.head_job
        front._head_job = (i, label, what, front.server, signature, digest)
    return True

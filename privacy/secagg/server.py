"""Server-side SecAgg+ state machine.

The server sees public keys, ciphertexts, seed commitments, masked vectors and
(per owner, one kind of) Shamir shares. It keeps only the running sum of masked
vectors. Every reply is checked once at the boundary; an offending site is
excluded with a recorded reason. Below the threshold, or when masks cannot be
removed with verified secrets, the round aborts (`SecAggAbort`) instead of
outputting a sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...common.cpus import usable_cpus
from . import crypto, shamir
from .client import share_points
from .config import SecAggConfig
from .errors import SecAggAbort
from .graph import harary
from .messages import (
    KeyAdvert,
    Malformed,
    MaskedReply,
    MaskedRequest,
    Rejected,
    SetupRequest,
    ShareReply,
    ShareRequest,
    SiteError,
    UnmaskReply,
    UnmaskRequest,
)
from .quantize import check_no_overflow, dequantize_sum, error_bound
from .reconstruct import reconstruct_all
from .unmask import (
    PairJob,
    PairMaskPool,
    min_words_per_process,
    pair_mask_sum,
    remove_self_masks,
)

CIPHERTEXT_BYTES = crypto.NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16


@dataclass
class AggregateResult:
    """Output of a successful round.

    sum_delta: float64 estimate of sum_i weight_i * delta_i over `participants`.
    total_weight: estimate of sum_i weight_i.
    participants: sites whose masked input is in the sum (U3).
    recovered: sites that dropped after sharing keys, whose masks were removed.
    bound: per-coordinate bound on |sum_delta - true sum| (unclipped inputs).
    weight_bound: same for total_weight.
    """

    sum_delta: np.ndarray
    total_weight: float
    participants: list[int]
    recovered: list[int]
    bound: float
    weight_bound: float


@dataclass
class _Sets:
    u1: list[int] = field(default_factory=list)
    u2: list[int] = field(default_factory=list)
    u3: list[int] = field(default_factory=list)


class SecAggServer:
    """Drives one round. Call the `on_*` methods in order with the sites' replies.

    Parameters
    ----------
    config:
        Protocol parameters (validated here).
    run_id, server_round:
        Bind keys, graph and commitments to this run and round.
    node_ids:
        The sampled sites (distinct unsigned 64-bit ints).
    vector_length:
        d, length of each site's flat update.
    unmask_workers:
        Processes (this one included) that regenerate dropped sites' pairwise masks in
        the unmask step: None = one per usable CPU, 1 = this process only. Fewer are
        used when there are not enough mask words per process to pay for their
        start-up (`fedsilo.privacy.secagg.unmask.PARALLEL_MIN_WORDS`). The sum is
        bit-identical either way.
    """

    def __init__(self, config: SecAggConfig, run_id: str, server_round: int,
                 node_ids: Sequence[int], vector_length: int,
                 unmask_workers: int | None = None) -> None:
        config.validate()
        ids = [int(n) for n in node_ids]
        if len(set(ids)) != len(ids) or any(not 0 <= n < 1 << 64 for n in ids) or len(ids) < 2:
            raise ValueError("secagg.node_ids: expected at least 2 distinct unsigned 64-bit "
                             f"node ids, got {len(ids)} ({len(set(ids))} distinct)")
        if not isinstance(vector_length, int) or vector_length < 1:
            raise ValueError(f"secagg.vector_length: expected an int >= 1, got {vector_length!r}")
        config.resolve(len(ids))
        check_no_overflow(len(ids), config.bits)
        self.config, self.run_id, self.round = config, run_id, server_round
        self.nodes = sorted(ids)
        self.d = vector_length
        if unmask_workers is not None and (not isinstance(unmask_workers, int)
                                           or unmask_workers < 1):
            raise ValueError(f"secagg.unmask_workers: expected an int >= 1 or None, got "
                             f"{unmask_workers!r}")
        self.unmask_workers = unmask_workers
        self.unmask_parallel = False  # whether the last unmask used worker processes
        self.sets = _Sets()
        self.dropped: dict[str, list[int]] = {s: [] for s in ("setup", "share", "masked",
                                                              "unmask")}
        self.reasons: dict[int, str] = {}
        self.k = self.t = 0
        self.graph: dict[int, list[int]] = {}
        self.keys: dict[int, KeyAdvert] = {}
        self.commitments: dict[int, bytes] = {}
        self._cts: dict[int, ShareReply] = {}
        self._acc: np.ndarray | None = None
        self._u2: set[int] = set()
        self._x: dict[int, int] = {}  # Shamir evaluation point of each U1 site

    # ------------------------------------------------------------- helpers
    def _split(self, stage: str, expected: Sequence[int], replies: Mapping[int, object],
               kind: type, check: Callable[[int, object], str | None]) -> list[int]:
        ok = []
        for n in expected:
            r = replies.get(n)
            if r is None:
                reason = "no reply"
            elif isinstance(r, SiteError):
                reason = f"site error: {r.reason}"
            elif isinstance(r, Malformed):
                reason = f"malformed reply: {r.reason}"
            elif isinstance(r, Rejected):
                reason = r.reason
            elif not isinstance(r, kind):
                reason = f"malformed reply (expected {kind.__name__})"
            else:
                reason = check(n, r)
            if reason is None:
                ok.append(n)
            else:
                self.dropped[stage].append(n)
                if reason != "no reply":
                    self.reasons[n] = f"{stage}: {reason}"
        return ok

    def _need(self, stage: str, alive: Sequence[int]) -> None:
        if len(alive) < self.t:
            raise SecAggAbort(f"secagg {stage}: only {len(alive)} of {len(self.nodes)} sites "
                              f"remain, threshold is {self.t}")

    def holders(self, owner: int) -> list[int]:
        """Sites holding shares of ``owner``'s secrets: its U2 neighbours and itself."""
        return [j for j in [*self.graph[owner], owner] if j in self._u2]

    # ------------------------------------------------------------- stage 1
    def setup_request(self) -> SetupRequest:
        """The request sent to every sampled site."""
        return SetupRequest(self.run_id, self.round, self.config, self.d, len(self.nodes))

    def on_keys(self, replies: Mapping[int, object]) -> dict[int, ShareRequest]:
        """Collect key advertisements; build the graph over U1; route neighbours' keys."""
        def check(_: int, r: object) -> str | None:
            assert isinstance(r, KeyAdvert)
            if not (crypto.is_valid_public_key(r.c_pk) and crypto.is_valid_public_key(r.s_pk)
                    and r.c_pk != r.s_pk):
                return "public keys must be two distinct valid 32-byte X25519 keys"
            return None

        u1 = self._split("setup", self.nodes, replies, KeyAdvert, check)
        # a key advertised by two sites: neither can be trusted
        seen: dict[bytes, list[int]] = {}
        for n in u1:
            r = replies[n]
            assert isinstance(r, KeyAdvert)
            for pk in (r.c_pk, r.s_pk):
                seen.setdefault(pk, []).append(n)
        dup = sorted({n for ns in seen.values() if len(ns) > 1 for n in ns})
        for n in dup:
            self.dropped["setup"].append(n)
            self.reasons[n] = "setup: public key also advertised by another site"
        u1 = [n for n in u1 if n not in set(dup)]
        try:
            self.k, self.t = self.config.resolve_round(len(self.nodes), len(u1))
        except ValueError as e:
            raise SecAggAbort(f"secagg setup: {e}") from None
        self.sets.u1 = u1
        self._x = share_points(u1)
        self.keys = {n: replies[n] for n in u1}  # type: ignore[misc]
        self.graph = harary(u1, self.k, self.run_id, self.round)
        out = {}
        for n in u1:
            nb = self.graph[n]
            out[n] = ShareRequest(
                participants=u1, neighbours=nb, c_pks=[self.keys[j].c_pk for j in nb],
                s_pks=[self.keys[j].s_pk for j in nb], own_c_pk=self.keys[n].c_pk,
                own_s_pk=self.keys[n].s_pk)
        return out

    # ------------------------------------------------------------- stage 2
    def on_shares(self, replies: Mapping[int, object]) -> dict[int, MaskedRequest]:
        """Collect encrypted shares; forward to each site the ciphertexts addressed to it."""
        def check(n: int, r: object) -> str | None:
            assert isinstance(r, ShareReply)
            recv = [int(x) for x in r.receivers]
            if sorted(recv) != self.graph[n] or len(r.ciphertexts) != len(recv):
                return "shares must go to exactly its graph neighbours, once each"
            if any(not isinstance(c, bytes) or len(c) != CIPHERTEXT_BYTES for c in r.ciphertexts):
                return f"each encrypted share must be {CIPHERTEXT_BYTES} bytes"
            if not isinstance(r.commitment, bytes) or len(r.commitment) != 32:
                return "seed commitment must be 32 bytes"
            return None

        u2 = self._split("share", self.sets.u1, replies, ShareReply, check)
        # a site whose secrets can no longer reach t holders cannot be unmasked: drop it
        # (to a fixed point, since dropping one reduces its neighbours' holder counts).
        alive = set(u2)
        while True:
            weak = [n for n in alive
                    if sum(j in alive for j in self.graph[n]) + 1 < self.t]
            if not weak:
                break
            for n in weak:
                alive.discard(n)
                self.dropped["share"].append(n)
                self.reasons[n] = "share: fewer than t neighbours left to hold its shares"
        u2 = [n for n in u2 if n in alive]
        self._need("share", u2)
        self.sets.u2 = u2
        self._u2 = set(u2)
        self._cts = {n: replies[n] for n in u2}  # type: ignore[misc]
        self.commitments = {n: self._cts[n].commitment for n in u2}
        inbox: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in u2}
        for i in u2:
            r = self._cts[i]
            for j, ct in zip(r.receivers, r.ciphertexts, strict=True):
                if int(j) in alive:
                    inbox[int(j)][0].append(i)
                    inbox[int(j)][1].append(ct)
        self._cts = {}
        return {n: MaskedRequest(senders=s, ciphertexts=c) for n, (s, c) in inbox.items()}

    # ------------------------------------------------------------- stage 3
    def on_masked(self, replies: Mapping[int, object]) -> dict[int, UnmaskRequest]:
        """Sum masked inputs (streaming, uint32 wrap-around); ask survivors for shares."""
        length = self.d + 2

        def check(_: int, r: object) -> str | None:
            assert isinstance(r, MaskedReply)
            m = r.masked
            if not isinstance(m, np.ndarray) or m.dtype != np.uint32 or m.shape != (length,):
                got = f"{m.dtype} {m.shape}" if isinstance(m, np.ndarray) else type(m).__name__
                return f"masked vector must be uint32 of shape ({length},), got {got}"
            return None

        u3 = self._split("masked", self.sets.u2, replies, MaskedReply, check)
        self._need("masked", u3)
        alive = set(u3)
        for i in self.sets.u2:
            have = sum(j in alive for j in self.holders(i))  # i counts only if it survived
            if have < self.t:
                raise SecAggAbort(f"secagg masked: node {i} cannot be unmasked, only {have} of "
                                  f"its share holders remain (threshold {self.t})")
        # the first input is copied (replies may be read-only views of message bytes)
        acc = np.array(replies[u3[0]].masked, dtype=np.uint32)  # type: ignore[attr-defined]
        for n in u3[1:]:
            acc += replies[n].masked  # type: ignore[attr-defined]
        self._acc = acc
        self.sets.u3 = u3
        dropped = [n for n in self.sets.u2 if n not in alive]
        req = UnmaskRequest(survivors=u3, dropped=dropped)  # one object: the same for all
        return dict.fromkeys(u3, req)

    # ------------------------------------------------------------- stage 4
    def on_unmask(self, replies: Mapping[int, object]) -> AggregateResult:
        """Reconstruct seeds / keys, verify them, remove all masks, check and dequantise."""
        u3 = set(self.sets.u3)
        dropped = [n for n in self.sets.u2 if n not in u3]
        pts_b, pts_sk = self.unmask_shares(replies)
        run, rnd = self.run_id, self.round
        length = self.d + 2
        # Dropped sites' keys first: their pairwise masks are the bulk of the work, so
        # workers start on them while this process reconstructs the seeds.
        sks = reconstruct_all(
            self._x, self.t, self.reasons, "mask key", dropped, pts_sk,
            lambda i, s: crypto.public_from_private(s) == self.keys[i].s_pk)
        jobs = [PairJob(sks[i], i, tuple((j, self.keys[j].s_pk) for j in self.graph[i]
                                         if j in u3)) for i in dropped]
        workers = usable_cpus() if self.unmask_workers is None else self.unmask_workers
        # enough masks per process to repay its start-up (see PARALLEL_MIN_WORDS)
        words = sum(job.size for job in jobs) * length
        workers = min(workers, words // min_words_per_process())
        pool = PairMaskPool(workers) if workers > 1 else None
        self.unmask_parallel = pool is not None
        try:
            if pool is not None:
                pool.submit(jobs, run, rnd, length)
            seeds = reconstruct_all(
                self._x, self.t, self.reasons, "mask seed", sorted(u3), pts_b,
                lambda i, s: crypto.commit(s, run, rnd, i) == self.commitments[i])
            assert self._acc is not None
            acc = self._acc
            remove_self_masks(acc, [seeds[i] for i in sorted(u3)])
            if pool is not None:
                acc -= pool.result()
            elif jobs:  # no dropouts, no pairwise masks left to remove
                acc -= pair_mask_sum(jobs, run, rnd, length)
        finally:
            if pool is not None:
                pool.close()
        m = len(u3)
        cfg = self.config
        if int(acc[-1]) != m:
            raise SecAggAbort("secagg unmask: recovered sum failed its consistency check "
                              "(masks did not cancel); no sum is output")
        wsum = float(dequantize_sum(acc[-2:-1], m, cfg.clip_range, cfg.bits)[0])
        bound = error_bound(m, cfg.clip_range, cfg.bits)
        if not -bound <= wsum <= m * cfg.clip_range + bound:
            raise SecAggAbort("secagg unmask: recovered weight sum out of range; "
                              "no sum is output")
        total = dequantize_sum(acc[:-2], m, cfg.clip_range, cfg.bits)
        total *= cfg.max_weight
        return AggregateResult(
            sum_delta=total,
            total_weight=max(wsum, 0.0) * cfg.max_weight / cfg.clip_range,
            participants=sorted(u3), recovered=sorted(dropped),
            bound=bound * cfg.max_weight, weight_bound=bound * cfg.max_weight / cfg.clip_range,
        )

    def unmask_shares(self, replies: Mapping[int, object]
                      ) -> tuple[dict[int, list[tuple[int, int]]], dict[int, list[tuple[int, int]]]]:
        """Check the unmask replies (excluding offenders) and decode their shares once.

        Returns, per survivor, its seed shares and, per dropped site, its key shares, as
        (holder, field element) pairs sorted by holder. Raises `SecAggAbort` below the
        threshold.
        """
        u3 = set(self.sets.u3)
        dropped = [n for n in self.sets.u2 if n not in u3]
        dset = set(dropped)
        decoded: dict[int, tuple[list[int], list[int]]] = {}

        def check(j: int, r: object) -> str | None:
            assert isinstance(r, UnmaskReply)
            held = self.holders(j)
            want_b = sorted(o for o in held if o in u3)
            want_sk = sorted(o for o in held if o in dset)
            if [int(o) for o in r.b_owners] != want_b or [int(o) for o in r.sk_owners] != want_sk:
                return "share owners do not match its neighbourhood's survivors / dropouts"
            if len(r.b_shares) != len(want_b) or len(r.sk_shares) != len(want_sk):
                return "one share per owner expected"
            try:  # decoded once here, used by the reconstruction
                decoded[j] = (shamir.decode_shares(r.b_shares), shamir.decode_shares(r.sk_shares))
            except (ValueError, TypeError):
                return "malformed share (not a field element)"
            return None

        u4 = self._split("unmask", self.sets.u3, replies, UnmaskReply, check)
        self._need("unmask", u4)
        pts_b: dict[int, list[tuple[int, int]]] = {n: [] for n in u3}
        pts_sk: dict[int, list[tuple[int, int]]] = {n: [] for n in dropped}
        for j in u4:  # u4 is sorted, so each owner's list is sorted by holder
            r = replies[j]
            assert isinstance(r, UnmaskReply)
            b_vals, sk_vals = decoded[j]
            for o, y in zip(r.b_owners, b_vals, strict=True):
                pts_b[int(o)].append((j, y))
            for o, y in zip(r.sk_owners, sk_vals, strict=True):
                pts_sk[int(o)].append((j, y))
        return pts_b, pts_sk

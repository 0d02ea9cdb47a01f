"""Server side of SecAgg+ on Flower's Message API: the run's session and its one driver.

`SecAggSession.exchange` is the secure form of a round's exchange-and-verify step
(`fedsilo.server.round`): it drives the protocol's stages with
`fedsilo.server.messaging.send_and_receive`, checks the sites' signatures on what they
send (`fedsilo.server.verify_replies.authenticate`), and returns the weighted sum, or
fails cleanly with a reason (the round then leaves the global model unchanged). The
server only ever holds public keys, ciphertexts, seed commitments, masked vectors (summed
as they arrive) and Shamir shares.

The next round rides on this one's messages, and the session keeps what it prepared
(``next_keys``). With ``announce_next``, the masked-input requests also carry the next
round's setup request, and each site answers with fresh public keys for that round; the
run's handshake does the same for the first round (`SecAggSession.attach_setup`). With
``next_nodes`` as well (the next round's sample, when it is known in advance), the server
then builds the next round's graph from those keys and its unmask requests carry each
site's share request of the next round: the sites answer with their encrypted shares,
and the next round starts at the masked stage. A round then takes two message exchanges
(masked input, unmask) instead of four; without ``next_nodes`` it takes three (share,
masked, unmask). On Flower's deployment runtime each exchange costs seconds (polling, a
fresh ClientApp process), so this is most of a secure round's latency there.

Keys and shares are generated fresh for, and bound to, their round (HKDF info, graph,
commitments, Shamir points over that round's participants), exactly as if that round's
own setup and share messages had asked for them; only their delivery moves. Sites without
usable keys (they dropped before the masked stage, or the round's parameters or sample
changed) get a setup message as before; a site that missed the share request riding on
the unmask request counts as dropped at the next round's share stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsilo.privacy.secagg import SecAggAbort, SecAggConfig, SecAggServer, SetupRequest
from fedsilo.privacy.secagg.records import (
    ATTEST_KEY,
    MASKED_KEY,
    MESSAGE_TYPES,
    NEXT_KEY,
    RECORD_KEY,
    encode,
)
from fedsilo.server.secagg_stages import (
    PreAdvertised,
    PreShared,
    exchange,
    keys_ahead,
    keys_from_replies,
    setup_and_share,
    setup_record,
    shares_ahead,
    vector_length,
)
from fedsilo.server.verify_replies import Signer, authenticate

__all__ = ["PreAdvertised", "PreShared", "SecAggOutcome", "SecAggSession", "Signer",
           "keys_from_replies", "setup_record"]

PROTOCOL = "secagg+"


@dataclass
class SecAggOutcome:
    """Result of one SecAgg+ round.

    ok / reason: success, or why the round failed (then ``sum_delta`` is None).
    sum_delta: float32 estimate of sum_i weight_i * delta_i over ``participants``.
    total_weight: estimate of sum_i weight_i (recovered securely).
    participants: node ids whose masked update is in the sum.
    dropped: per stage ("setup", "share", "masked", "unmask"), node ids that left.
    recovered: dropouts whose masks were removed through their key shares.
    metrics: protocol timings and counts, plus the plain mean of site-reported metrics.
    lineage: what the round record stores about the protocol.
    next_keys: with ``announce_next``, the next round's keys advertised by the sites of
        the masked stage (`PreAdvertised`) or, with ``next_nodes`` too, its setup and
        share stages already run (`PreShared`); the session keeps it for that round.
    sum_float64: with a ``precise`` session, the sum as the protocol recovered it
        (float64, not rounded to float32: the statistics exchange reads it exactly).
    attestations: with ``signers``, per node whose masked input's signature verified:
        ``update_digest`` (of the masked uint32 vector received), ``signature``,
        ``data_fingerprint`` and, if its unmask reply's signature verified too,
        ``unmask_digest`` and ``unmask_signature``.
    """

    ok: bool
    reason: str | None
    sum_delta: np.ndarray | None
    total_weight: float
    participants: list[int]
    dropped: dict[str, list[int]]
    recovered: list[int]
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    next_keys: PreAdvertised | PreShared | None = None
    attestations: dict[int, dict[str, str]] = field(default_factory=dict)
    sum_float64: np.ndarray | None = None


@dataclass
class _RoundState:
    """What one secure exchange gathers on its way (timings, metrics, attestations, the
    next round's keys) besides the protocol state itself."""

    upcoming: list[int] | None
    next_setup: SetupRequest | None
    timings: dict[str, float] = field(default_factory=dict)
    site_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    attested: dict[int, dict[str, str]] = field(default_factory=dict)
    n_pre: int = 0
    n_ahead: int = 0
    next_keys: PreAdvertised | PreShared | None = None


class SecAggSession:
    """A run's SecAgg+ across its rounds, and the one driver of its secure exchanges.

    The session holds the protocol parameters and ``next_keys``: what the sites prepared
    for the next secure round during the round before it (or the run's handshake, see
    `attach_setup`): their advertised keys (`PreAdvertised`) or keys and shares
    (`PreShared`). `exchange` runs one round's stages and keeps what that round prepared
    for the next. ``next_keys`` is not checkpointed: a resumed run asks for it again with
    its handshake.

    Parameters
    ----------
    config : the SecAgg+ parameters.
    run_id : bound into keys, graph and commitments.
    timeout : seconds to wait for replies at each stage; late sites count as dropped.
    vector_length : length of the flat update; None: the total size of the training
        content's ``arrays`` record, per exchange.
    message_types : the message type of each stage (default: a training round's); the
        run's statistics exchange (`fedsilo.server.task_round`) uses its own.
    precise : keep the float64 sum in `SecAggOutcome.sum_float64` too.
    """

    def __init__(self, config: SecAggConfig, run_id: str, *, timeout: float | None,
                 vector_length: int | None = None,
                 message_types: Mapping[str, str] = MESSAGE_TYPES, precise: bool = False) -> None:
        self.config = config
        self.run_id = run_id
        self.timeout = timeout
        self.vector_length = vector_length
        self.message_types = message_types
        self.precise = precise
        self.next_keys: PreAdvertised | PreShared | None = None

    def attach_setup(self, content: RecordDict, server_round: int, sample_size: int
                     ) -> SetupRequest:
        """Put ``server_round``'s setup request on ``content`` (the handshake query), so
        that the sites answer with their keys for it (see `keys_from_handshake`)."""
        assert self.vector_length is not None, "the handshake needs the model's length"
        setup = SetupRequest(self.run_id, server_round, self.config, self.vector_length,
                             sample_size)
        content[NEXT_KEY] = setup_record(setup)
        return setup

    def keys_from_handshake(self, setup: SetupRequest, replies: Iterable[Message]) -> None:
        """Keep the keys the handshake ``replies`` advertised for ``setup``'s round."""
        self.next_keys = keys_from_replies(setup, replies)

    def exchange(self, grid: Grid, node_ids: list[int], *, train_content: RecordDict,
                 server_round: int, announce_next: bool = False,
                 next_nodes: Sequence[int] | None = None,
                 signers: Mapping[int, Signer] | None = None) -> SecAggOutcome:
        """Run one SecAgg+ round's exchange over ``node_ids``: the server learns only the
        weighted sum of their updates.

        train_content: the training content (ArrayRecord "arrays" with the global model,
            ConfigRecord "config"); sent with the masked-input stage.
        announce_next: ask the masked stage's sites for their keys for round
            ``server_round + 1`` (same parameters; sample size ``len(next_nodes)``, else
            this round's); kept in ``next_keys`` for that round.
        next_nodes: with ``announce_next``, the sites round ``server_round + 1`` will
            sample, if known now. If every one of them advertised keys and survived to this
            round's unmask stage, that round's share stage rides on this round's unmask
            exchange (``next_keys`` is then a `PreShared`).
        signers: the sites' keys and announced data fingerprints (node id -> `Signer`). A
            site with a key must sign its masked input and its unmask reply; one whose
            signature is missing or does not verify is excluded as a dropout would be, with
            the reason (`fedsilo.server.verify_replies.authenticate`). None: not checked.

        Invalid arguments raise ValueError before any message is sent; protocol failures
        (too few sites, unrecoverable masks, failed consistency check) return ``ok=False``.
        The stages ahead this round uses are ``next_keys`` (from the round before): a
        `PreShared` round is used if this round's setup request equals its own,
        ``node_ids`` are its sites and its share stage succeeded; `PreAdvertised` keys
        are used for the sites that gave them if the setup requests are equal; every
        other site gets a setup message.
        """
        reserved = {RECORD_KEY, MASKED_KEY, NEXT_KEY, ATTEST_KEY} & set(train_content)
        if reserved:
            raise ValueError(f"train_content: record names {sorted(reserved)} are reserved for SecAgg")
        d = self.vector_length if self.vector_length is not None else vector_length(train_content)
        server = SecAggServer(self.config, self.run_id, server_round, node_ids, d)
        upcoming = sorted(int(n) for n in next_nodes) if next_nodes is not None else None
        st = _RoundState(upcoming, SetupRequest(
            self.run_id, server_round + 1, self.config, d,
            len(upcoming) if upcoming is not None else len(server.nodes)) if announce_next else None)
        result, reason = None, None
        try:
            server, reqs = self._start(grid, server, st)
            reqs = self._masked(grid, server, reqs, train_content, st, signers)
            result = self._unmask(grid, server, reqs, train_content, st, signers)
        except SecAggAbort as e:
            reason = str(e)
        out = _outcome(server, result, reason, st, self.config)
        if self.precise and result is not None:
            out.sum_float64 = result.sum_delta
        self.next_keys = out.next_keys
        return out

    def _start(self, grid: Grid, server: SecAggServer, st: _RoundState
               ) -> tuple[SecAggServer, Mapping[int, object]]:
        """The round's protocol state and masked-input requests: from the stages run
        ahead (`PreShared`), or from its own setup and share stages."""
        setup = server.setup_request()  # the same for every site: encoded once
        ahead = self.next_keys
        if isinstance(ahead, PreShared) and ahead.setup == setup \
                and ahead.server.nodes == server.nodes and ahead.abort is None:
            st.n_pre, st.n_ahead = len(ahead.server.sets.u1), len(ahead.server.sets.u2)
            return ahead.server, ahead.requests
        # not usable (another sample or parameters, or its share stage left too few
        # sites): every site is set up afresh; a site that shared ahead but has not
        # masked accepts new keys for the round
        reqs, st.n_pre = setup_and_share(grid, server, setup, ahead, self.timeout,
                                          st.timings, st.site_metrics, self.message_types)
        return server, reqs

    def _masked(self, grid: Grid, server: SecAggServer, reqs: Mapping[int, object],
                train_content: RecordDict, st: _RoundState,
                signers: Mapping[int, Signer] | None) -> Mapping[int, object]:
        """The masked-input stage (with the training content, and the next round's setup
        request when announced): the unmask requests."""
        rnd = server.round
        extra = train_content
        if st.next_setup is not None:
            extra = RecordDict(dict(train_content.items()))
            extra[NEXT_KEY] = setup_record(st.next_setup)
        t0 = time.perf_counter()
        masked: list[Message] = []
        replies, m = exchange(grid, "masked", reqs, rnd, self.timeout, extra, masked,
                              types=self.message_types)
        st.site_metrics.update(m)
        if st.next_setup is not None:
            st.next_keys = keys_from_replies(st.next_setup, masked)
        t1 = time.perf_counter()
        authenticate("masked", replies, masked, signers, self.run_id, rnd, st.attested)
        del masked
        st.timings["secagg_masked_signatures_s"] = time.perf_counter() - t1
        out = server.on_masked(replies)
        del replies  # the masked vectors (n x d words) are in the sum now: free them
        st.timings["secagg_masked_server_s"] = time.perf_counter() - t1
        st.timings["secagg_masked_wall_s"] = time.perf_counter() - t0
        return out

    def _unmask(self, grid: Grid, server: SecAggServer, reqs: Mapping[int, object],
                train_content: RecordDict, st: _RoundState,
                signers: Mapping[int, Signer] | None) -> Any:
        """The unmask stage (carrying the next round's share requests when its sample is
        known and its sites advertised keys): the aggregate."""
        rnd = server.round
        ahead: tuple[SecAggServer, Mapping[int, object]] | None = None
        keys = st.next_keys
        if st.upcoming is not None and isinstance(keys, PreAdvertised) \
                and set(st.upcoming) <= set(keys.keys) & set(reqs):
            t1 = time.perf_counter()
            ahead = keys_ahead(self.config, self.run_id, rnd + 1, st.upcoming, server.d, keys)
            st.timings["secagg_next_setup_server_s"] = time.perf_counter() - t1
        per_node = None if ahead is None else {
            n: {NEXT_KEY: encode(req, rnd + 1)[RECORD_KEY]} for n, req in ahead[1].items()}
        # the unmask requests carry the training content's small records (not the model),
        # so that a site can tell who it is there too (it signs its unmask reply)
        light = RecordDict({k: v for k, v in train_content.items()
                            if not isinstance(v, ArrayRecord)})
        t0 = time.perf_counter()
        unmasked: list[Message] = []
        replies, _ = exchange(grid, "unmask", reqs, rnd, self.timeout, light, unmasked, per_node,
                              types=self.message_types)
        if ahead is not None and st.next_setup is not None:
            t1 = time.perf_counter()
            st.next_keys = shares_ahead(ahead[0], st.next_setup, unmasked)
            st.timings["secagg_next_share_server_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        authenticate("unmask", replies, unmasked, signers, self.run_id, rnd, st.attested)
        result = server.on_unmask(replies)
        st.timings["secagg_unmask_server_s"] = time.perf_counter() - t1
        st.timings["secagg_unmask_wall_s"] = time.perf_counter() - t0
        return result


def _outcome(server: SecAggServer, result: Any, reason: str | None, st: _RoundState,
             config: SecAggConfig) -> SecAggOutcome:
    """The round's `SecAggOutcome` (metrics and lineage) from its final protocol state."""
    participants = result.participants if result else []
    metrics = dict(st.timings)
    metrics["secagg_participants"] = float(len(participants))
    metrics["secagg_keys_preadvertised"] = float(st.n_pre)
    metrics["secagg_shares_ahead"] = float(st.n_ahead)
    site_metrics = st.site_metrics
    keys = sorted({k for p in participants for k in site_metrics.get(p, {})})
    for k in keys:  # plain (unweighted) mean: per-site weights stay secret
        vals = [site_metrics[p][k] for p in participants if k in site_metrics.get(p, {})]
        metrics[k] = float(np.mean(vals))
    record: dict[str, Any] = {
        "protocol": PROTOCOL,
        "degree": server.k,
        "threshold": server.t,
        "sampled": list(server.nodes),
        "participants": participants,
        "dropped": {s: sorted(v) for s, v in server.dropped.items()},
        "excluded": {str(n): r for n, r in sorted(server.reasons.items())},
        "recovered_dropouts": result.recovered if result else [],
        "keys_preadvertised": st.n_pre,
        "shares_ahead": st.n_ahead,
        "quantisation": {"clip_range": config.clip_range, "bits": config.bits,
                         "ring_bits": 32, "max_weight": config.max_weight,
                         "bound": result.bound if result else None},
        "ok": result is not None,
        "reason": reason,
    }
    return SecAggOutcome(
        ok=result is not None,
        reason=reason,
        sum_delta=result.sum_delta.astype(np.float32) if result else None,
        total_weight=result.total_weight if result else 0.0,
        participants=participants,
        dropped={s: sorted(v) for s, v in server.dropped.items()},
        recovered=result.recovered if result else [],
        metrics=metrics,
        lineage=record,
        next_keys=st.next_keys,
        attestations=st.attested,
    )

"""Server side of SecAgg+ on Flower's Message API: one secure-aggregation round.

`run_secagg_round` drives the four stages with `fedsilo.server.messaging.send_and_receive`.
The server only ever holds public keys, ciphertexts, seed commitments, masked vectors
(summed as they arrive) and Shamir shares; it outputs the weighted sum, or fails cleanly
with a reason (the caller then leaves the global model unchanged).

The next round rides on this one's messages. With ``announce_next``, the masked-input
requests also carry the next round's setup request, and each site answers with fresh
public keys for that round; the server's round loop does the same for the first round
with its handshake query (`setup_record`, `keys_from_replies`). With ``next_nodes`` as
well (the next round's sample, when it is known in advance), the server then builds the
next round's graph from those keys and its unmask requests carry each site's share
request of the next round: the sites answer with their encrypted shares, and the next
round starts at the masked stage. A round then takes two message exchanges (masked
input, unmask) instead of four; without ``next_nodes`` it takes three (share, masked,
unmask). On Flower's deployment runtime each exchange costs seconds (polling, a fresh
ClientApp process), so this is most of a secure round's latency there.

Keys and shares are generated fresh for, and bound to, their round (HKDF info, graph,
commitments, Shamir points over that round's participants), exactly as if that round's
own setup and share messages had asked for them; only their delivery moves. The outcome's
``next_keys`` (a `PreAdvertised` or a `PreShared`) is passed as the next round's
``preadvertised``. Sites without usable keys (they dropped before the masked stage, or
the round's parameters or sample changed) get a setup message as before; a site that
missed the share request riding on the unmask request counts as dropped at the next
round's share stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsilo import lineage
from fedsilo.lineage.signing import unmask_digest, verify_unmask
from fedsilo.privacy.secagg import (
    KeyAdvert,
    MaskedReply,
    SecAggAbort,
    SecAggConfig,
    SecAggServer,
    SetupRequest,
    SiteError,
    UnmaskReply,
)
from fedsilo.privacy.secagg.messages import Rejected
from fedsilo.privacy.secagg.records import (
    ATTEST_KEY,
    MASKED_KEY,
    MESSAGE_TYPES,
    NEXT_KEY,
    RECORD_KEY,
    decode_next_keys,
    decode_next_shares,
    decode_reply,
    encode,
)
from fedsilo.server.messaging import send_and_receive

PROTOCOL = "secagg+"
METRICS_KEY = "metrics"


@dataclass(frozen=True)
class Signer:
    """What the run's handshake told the server about a site, to check what it signs.

    public_key: the site's Ed25519 public key (64 hex); "" for a site without a key (its
        replies are then not checked, and it has no attested contribution).
    data_fingerprint: the data fingerprint the site announced.
    """

    public_key: str
    data_fingerprint: str


@dataclass(frozen=True)
class PreAdvertised:
    """Public keys sites advertised ahead of a round, and the setup request they answered.

    setup: the round's parameters as the sites received them; the keys are used only if
        the round's own setup request is equal (same run, round, config, d, sample size).
    keys: node id -> the site's key advertisement for that round.
    """

    setup: SetupRequest
    keys: Mapping[int, KeyAdvert]


@dataclass(frozen=True)
class PreShared:
    """A round whose setup and share stages ran during the round before it.

    setup: the round's parameters; used only if the round's own setup request is equal
        and it samples exactly ``server.nodes``.
    server: the round's protocol state after its share stage (graph, commitments, U1, U2).
    requests: node id -> masked-input request (the encrypted shares addressed to it).
    abort: why the round cannot start at its masked stage (its share stage left too few
        sites), else None; the round then sets every site up afresh.
    """

    setup: SetupRequest
    server: SecAggServer
    requests: Mapping[int, object]
    abort: str | None = None


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
        share stages already run (`PreShared`); pass it as the next round's
        ``preadvertised``.
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


def setup_record(setup: SetupRequest) -> ConfigRecord:
    """The record that carries ``setup`` on another message, under `NEXT_KEY` (the unmask
    request of the round before, or the run's handshake query for its first round)."""
    return encode(setup, setup.server_round)[RECORD_KEY]  # type: ignore[return-value]


def keys_from_replies(setup: SetupRequest, replies: Iterable[Message]) -> PreAdvertised | None:
    """The key advertisements for ``setup``'s round found in ``replies`` (under `NEXT_KEY`);
    None if there are none. Error replies and unreadable records are skipped."""
    keys: dict[int, KeyAdvert] = {}
    for rep in replies:
        if rep.has_error():
            continue
        nk = decode_next_keys(rep.content, setup.server_round)
        if isinstance(nk, KeyAdvert):
            keys[int(rep.metadata.src_node_id)] = nk
    return PreAdvertised(setup, keys) if keys else None


def _vector_length(train_content: RecordDict) -> int:
    arrays = train_content.get("arrays")
    if not isinstance(arrays, ArrayRecord) or not arrays:
        raise ValueError("train_content: expected an ArrayRecord 'arrays' holding the model "
                         "(its total size is the length of the masked update)")
    return int(sum(int(np.prod(a.shape)) for a in arrays.values()))


def _exchange(grid: Grid, stage: str, requests: Mapping[int, object], server_round: int,
              timeout: float, extra: RecordDict | None,
              accepted: list[Message] | None = None,
              per_node: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
              ) -> tuple[dict[int, object], dict[int, dict[str, float]]]:
    """Send each site its request (plus the records in ``extra``, and in ``per_node`` for
    that site); decode the replies.

    ``accepted``, if given, collects the reply messages that were decoded (one per site,
    no errors), for records outside the stage's own.
    """
    msgs = []
    # A request object sent to many sites (setup, unmask) is encoded once; each message
    # gets its own RecordDict holding the shared (read-only) records, as the training
    # records in ``extra`` already are.
    encoded: dict[int, RecordDict] = {}
    for node, req in requests.items():
        base = encoded.get(id(req))
        if base is None:
            base = encoded[id(req)] = encode(req, server_round)
        content = RecordDict(dict(base.items()))
        for records in (extra, None if per_node is None else per_node.get(node)):
            if records is not None:
                for key, rec in records.items():
                    content[key] = rec
        msgs.append(Message(content=content, dst_node_id=node,
                            message_type=MESSAGE_TYPES[stage], group_id=str(server_round)))
    replies: dict[int, object] = {}
    metrics: dict[int, dict[str, float]] = {}
    for rep in send_and_receive(grid, msgs, timeout=timeout):
        src = int(rep.metadata.src_node_id)
        if src not in requests or src in replies:
            continue
        if rep.has_error():
            replies[src] = SiteError(rep.error.reason or f"error code {rep.error.code}")
            continue
        replies[src] = decode_reply(stage, rep.content, server_round)
        if accepted is not None:
            accepted.append(rep)
        m = rep.content.get(METRICS_KEY)
        if isinstance(m, MetricRecord):
            metrics[src] = {k: float(v) for k, v in m.items() if isinstance(v, int | float)}
    return replies, metrics


def _setup_and_share(grid: Grid, server: SecAggServer, setup: SetupRequest,
                     preadvertised: PreAdvertised | PreShared | None, timeout: float,
                     timings: dict[str, float], site_metrics: dict[int, dict[str, float]],
                     ) -> tuple[Mapping[int, object], int]:
    """The setup (for sites without usable keys) and share stages of ``server``'s round:
    (masked-input requests, number of sites whose keys were advertised ahead)."""
    rnd = server.round
    keys: dict[int, object] = {}
    if isinstance(preadvertised, PreAdvertised) and preadvertised.setup == setup:
        keys = {n: preadvertised.keys[n] for n in server.nodes if n in preadvertised.keys}
    n_pre = len(keys)
    missing = [n for n in server.nodes if n not in keys]
    t0 = time.perf_counter()
    if missing:
        replies, m = _exchange(grid, "setup", dict.fromkeys(missing, setup), rnd, timeout, None)
        site_metrics.update(m)
        keys.update(replies)
    t1 = time.perf_counter()
    reqs: Mapping[int, object] = server.on_keys(keys)
    timings["secagg_setup_server_s"] = time.perf_counter() - t1
    timings["secagg_setup_wall_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    replies, m = _exchange(grid, "share", reqs, rnd, timeout, None)
    site_metrics.update(m)
    t1 = time.perf_counter()
    reqs = server.on_shares(replies)
    timings["secagg_share_server_s"] = time.perf_counter() - t1
    timings["secagg_share_wall_s"] = time.perf_counter() - t0
    return reqs, n_pre


def _keys_ahead(config: SecAggConfig, run_id: str, next_round: int, nodes: list[int], d: int,
                keys: PreAdvertised) -> tuple[SecAggServer, Mapping[int, object]] | None:
    """The next round's setup stage, from the keys its sites advertised during this one:
    (its protocol state, share requests), or None if that stage aborts (the next round
    then starts with the keys alone)."""
    nxt = SecAggServer(config, run_id, next_round, nodes, d)
    try:
        return nxt, nxt.on_keys({n: keys.keys[n] for n in nodes})
    except SecAggAbort:
        return None


def _shares_ahead(nxt: SecAggServer, setup: SetupRequest, replies: Iterable[Message]
                  ) -> PreShared:
    """The next round's share stage, from the encrypted shares riding on this round's
    unmask ``replies``. A site that sent none counts as dropped at that stage."""
    shares: dict[int, object] = {}
    for rep in replies:
        got = decode_next_shares(rep.content, nxt.round)
        if got is not None:
            shares[int(rep.metadata.src_node_id)] = got
    try:
        return PreShared(setup, nxt, nxt.on_shares(shares))
    except SecAggAbort as e:
        return PreShared(setup, nxt, {}, str(e))


def _attest_masked(reply: MaskedReply, rec: object, signer: Signer, run_id: str,
                   server_round: int) -> tuple[str | None, dict[str, str]]:
    """(why the masked input is refused, or None; what it attests)."""
    if not isinstance(rec, ConfigRecord):
        return "masked input is not signed (no site signature record)", {}
    digest = lineage.update_digest(reply.masked)
    fingerprint, signature = rec.get("data_fingerprint"), rec.get("signature")
    if rec.get("digest") != digest:
        return "masked input digest does not match the masked vector received", {}
    if fingerprint != signer.data_fingerprint:
        return "data fingerprint differs from the one announced at the handshake", {}
    if not isinstance(signature, str) or not lineage.verify_contribution(
            signer.public_key, signature, run_id, server_round, digest, fingerprint):
        return "site signature does not verify", {}
    return None, {"update_digest": digest, "signature": signature,
                  "data_fingerprint": str(fingerprint)}


def _attest_unmask(reply: UnmaskReply, rec: object, signer: Signer, run_id: str,
                   server_round: int) -> tuple[str | None, dict[str, str]]:
    """(why the unmask reply is refused, or None; what it attests)."""
    if not isinstance(rec, ConfigRecord):
        return "unmask reply is not signed (no site signature record)", {}
    try:
        digest = unmask_digest([int(o) for o in reply.b_owners], list(reply.b_shares),
                               [int(o) for o in reply.sk_owners], list(reply.sk_shares))
    except (TypeError, ValueError) as e:
        return f"malformed reply: {e}", {}
    signature = rec.get("signature")
    if rec.get("digest") != digest:
        return "unmask reply digest does not match the shares received", {}
    if not isinstance(signature, str) or not verify_unmask(
            signer.public_key, signature, run_id, server_round, digest):
        return "site signature of the unmask reply does not verify", {}
    return None, {"unmask_digest": digest, "unmask_signature": signature}


def _authenticate(stage: str, replies: dict[int, object], messages: list[Message],
                  signers: Mapping[int, Signer] | None, run_id: str, server_round: int,
                  attested: dict[int, dict[str, str]]) -> None:
    """Check the site signature on each masked-input / unmask reply of a site with a key.

    A reply whose signature is missing or does not verify becomes `Rejected` (the site
    is excluded as a dropout would be, with the reason); what verified goes into
    ``attested`` (node id -> fields for lineage).
    """
    if signers is None:
        return
    kind: type = MaskedReply if stage == "masked" else UnmaskReply
    check: Callable[..., tuple[str | None, dict[str, str]]] = (
        _attest_masked if stage == "masked" else _attest_unmask)
    content = {int(m.metadata.src_node_id): m.content for m in messages}
    for n, reply in replies.items():
        signer = signers.get(n)
        if not isinstance(reply, kind) or signer is None or not signer.public_key:
            continue
        rec = content[n].get(ATTEST_KEY) if n in content else None
        problem, fields = check(reply, rec, signer, run_id, server_round)
        if problem is not None:
            replies[n] = Rejected(problem)
        elif stage == "masked":
            attested[n] = fields
        elif n in attested:
            attested[n].update(fields)


def run_secagg_round(
    grid: Grid,
    node_ids: list[int],
    *,
    train_content: RecordDict,
    config: SecAggConfig,
    run_id: str,
    server_round: int,
    timeout: float,
    vector_length: int | None = None,
    preadvertised: PreAdvertised | PreShared | None = None,
    announce_next: bool = False,
    next_nodes: Sequence[int] | None = None,
    signers: Mapping[int, Signer] | None = None,
) -> SecAggOutcome:
    """Run one SecAgg+ round over ``node_ids``.

    Parameters
    ----------
    grid:
        The ServerApp's Grid.
    node_ids:
        Sampled sites.
    train_content:
        The normal training content (ArrayRecord "arrays" with the global model,
        ConfigRecord "config"); sent with the masked-input stage.
    config:
        SecAgg+ parameters.
    run_id, server_round:
        Bound into keys, graph and commitments.
    timeout:
        Seconds to wait for replies at each stage; late sites count as dropped.
    vector_length:
        Length of the flat update; defaults to the total size of ``train_content["arrays"]``.
    preadvertised:
        This round's stages run ahead of it: the previous round's ``next_keys``, or
        `keys_from_replies` of the run's handshake. A `PreShared` round is used if this
        round's setup request equals its own, ``node_ids`` are its sites and its share
        stage succeeded (the round starts at the masked stage); otherwise every site is
        set up afresh. `PreAdvertised` keys are used for the sites that
        gave them if the setup requests are equal; the other sites get a setup message.
    announce_next:
        Ask the masked stage's sites for their keys for round ``server_round + 1``
        (same parameters; sample size ``len(next_nodes)``, else this round's); they
        come back in ``next_keys``.
    next_nodes:
        With ``announce_next``: the sites round ``server_round + 1`` will sample, if
        known now. If every one of them advertised keys and survived to this round's
        unmask stage, that round's share stage rides on this round's unmask exchange
        and ``next_keys`` is a `PreShared`.
    signers:
        The sites' keys and announced data fingerprints (node id -> `Signer`). A site
        with a key must sign its masked input (`fedsilo.lineage.sign_contribution` over
        the masked vector's `update_digest`) and its unmask reply
        (`fedsilo.lineage.signing.sign_unmask`); a reply whose signature is missing or
        does not verify excludes the site as a dropout would, with the reason. What
        verified is in the outcome's ``attestations``. None: nothing is checked.

    Invalid arguments raise ValueError before any message is sent; protocol failures
    (too few sites, unrecoverable masks, failed consistency check) return ``ok=False``.
    """
    reserved = {RECORD_KEY, MASKED_KEY, NEXT_KEY, ATTEST_KEY} & set(train_content)
    if reserved:
        raise ValueError(f"train_content: record names {sorted(reserved)} are reserved for SecAgg")
    d = vector_length if vector_length is not None else _vector_length(train_content)
    server = SecAggServer(config, run_id, server_round, node_ids, d)
    upcoming = sorted(int(n) for n in next_nodes) if next_nodes is not None else None
    timings: dict[str, float] = {}
    site_metrics: dict[int, dict[str, float]] = {}
    result = None
    reason = None
    next_keys: PreAdvertised | PreShared | None = None
    next_setup = (SetupRequest(run_id, server_round + 1, config, d,
                               len(upcoming) if upcoming is not None else len(server.nodes))
                  if announce_next else None)
    n_pre = n_ahead = 0
    attested: dict[int, dict[str, str]] = {}
    # the unmask requests carry the training content's small records (not the model), so
    # that a site can tell who it is there too (it signs its unmask reply)
    light = RecordDict({k: v for k, v in train_content.items() if not isinstance(v, ArrayRecord)})
    try:
        setup = server.setup_request()  # the same for every site: encoded once
        if isinstance(preadvertised, PreShared) and preadvertised.setup == setup \
                and preadvertised.server.nodes == server.nodes and preadvertised.abort is None:
            server = preadvertised.server
            n_pre, n_ahead = len(server.sets.u1), len(server.sets.u2)
            reqs: Mapping[int, object] = preadvertised.requests
        else:
            # not usable (another sample or parameters, or its share stage left too few
            # sites): every site is set up afresh; a site that shared ahead but has not
            # masked accepts new keys for the round
            reqs, n_pre = _setup_and_share(grid, server, setup, preadvertised, timeout,
                                           timings, site_metrics)
        masked_extra = train_content
        if next_setup is not None:
            masked_extra = RecordDict(dict(train_content.items()))
            masked_extra[NEXT_KEY] = setup_record(next_setup)
        t0 = time.perf_counter()
        masked: list[Message] = []
        replies, m = _exchange(grid, "masked", reqs, server_round, timeout, masked_extra, masked)
        site_metrics.update(m)
        if next_setup is not None:
            next_keys = keys_from_replies(next_setup, masked)
        t1 = time.perf_counter()
        _authenticate("masked", replies, masked, signers, run_id, server_round, attested)
        del masked
        timings["secagg_masked_signatures_s"] = time.perf_counter() - t1
        reqs = server.on_masked(replies)
        del replies  # the masked vectors (n x d words) are in the sum now: free them
        timings["secagg_masked_server_s"] = time.perf_counter() - t1
        timings["secagg_masked_wall_s"] = time.perf_counter() - t0
        ahead: tuple[SecAggServer, Mapping[int, object]] | None = None
        if upcoming is not None and isinstance(next_keys, PreAdvertised) \
                and set(upcoming) <= set(next_keys.keys) & set(reqs):
            t1 = time.perf_counter()
            ahead = _keys_ahead(config, run_id, server_round + 1, upcoming, d, next_keys)
            timings["secagg_next_setup_server_s"] = time.perf_counter() - t1
        per_node = None if ahead is None else {
            n: {NEXT_KEY: encode(req, server_round + 1)[RECORD_KEY]}
            for n, req in ahead[1].items()}
        t0 = time.perf_counter()
        unmasked: list[Message] = []
        replies, _ = _exchange(grid, "unmask", reqs, server_round, timeout, light, unmasked,
                               per_node)
        if ahead is not None and next_setup is not None:
            t1 = time.perf_counter()
            next_keys = _shares_ahead(ahead[0], next_setup, unmasked)
            timings["secagg_next_share_server_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        _authenticate("unmask", replies, unmasked, signers, run_id, server_round, attested)
        result = server.on_unmask(replies)
        timings["secagg_unmask_server_s"] = time.perf_counter() - t1
        timings["secagg_unmask_wall_s"] = time.perf_counter() - t0
    except SecAggAbort as e:
        reason = str(e)

    participants = result.participants if result else []
    metrics = dict(timings)
    metrics["secagg_participants"] = float(len(participants))
    metrics["secagg_keys_preadvertised"] = float(n_pre)
    metrics["secagg_shares_ahead"] = float(n_ahead)
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
        "keys_preadvertised": n_pre,
        "shares_ahead": n_ahead,
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
        next_keys=next_keys,
        attestations=attested,
    )


def config_record(config: SecAggConfig) -> ConfigRecord:
    """The SecAgg parameters as a ConfigRecord (for the lead's run config / genesis record)."""
    d = config.to_dict()
    return ConfigRecord({k: (-1 if v is None else v) for k, v in d.items()})  # type: ignore[misc]


@dataclass
class RoundAudit:
    """A secure round as the round record states it (site ids, not node ids).

    replied / dropped / rejected / accepted: as in a plain round; a site excluded with a
        reason (its refusal, a malformed reply, a signature that does not verify...) and
        not in the sum is rejected with that reason, a site that went silent is dropped.
    contributions: one per site whose masked input's signature verified: the masked
        vector's digest, the site's signature over it, its data fingerprint; the example
        count stays secret (null). ``detail.secagg`` holds the site's fate and, when its
        unmask reply's signature verified, that reply's digest and signature.
    secagg: the protocol's lineage plus ``participant_sites``, ``recovered_sites`` and
        ``site_fates`` (site id -> ``in_sum``, ``recovered``, ``dropped`` or ``aborted``).
    """

    replied: list[str]
    dropped: list[str]
    rejected: dict[str, str]
    accepted: list[str]
    contributions: list[dict[str, Any]]
    secagg: dict[str, Any]


def _fate(n: int, out: SecAggOutcome, left: set[int]) -> str:
    if n in out.participants:
        return "in_sum"
    if n in out.recovered:
        return "recovered"
    return "aborted" if not out.ok and n not in left else "dropped"


def round_audit(out: SecAggOutcome, site_of: Mapping[int, str]) -> RoundAudit:
    """The round record's fields for ``out`` (``site_of``: node id -> site id, the sample)."""
    left = {n for nodes in out.dropped.values() for n in nodes}
    excluded = out.lineage.get("excluded", {})
    fates = {n: _fate(n, out, left) for n in site_of}
    rejected = {site_of[n]: excluded[str(n)] for n in site_of
                if fates[n] != "in_sum" and str(n) in excluded}
    dropped = sorted(site_of[n] for n in site_of
                     if fates[n] != "in_sum" and n in left and str(n) not in excluded)
    contributions = []
    for n in sorted(out.attestations, key=lambda n: site_of.get(n, "")):
        if n not in site_of:
            continue
        a = out.attestations[n]
        detail: dict[str, Any] = {"fate": fates[n]}
        if "unmask_signature" in a:
            detail.update(unmask_digest=a["unmask_digest"], unmask_signature=a["unmask_signature"])
        contributions.append({
            "site_id": site_of[n], "update_digest": a["update_digest"], "num_examples": None,
            "data_fingerprint": a["data_fingerprint"], "signature": a["signature"],
            "fate": "accepted" if fates[n] == "in_sum" else "rejected", "score": None,
            "detail": {"aggregation": "secure sum" if fates[n] == "in_sum" else fates[n],
                       "secagg": detail},
        })
    secagg = {**out.lineage,
              "participant_sites": sorted(site_of[n] for n in out.participants if n in site_of),
              "recovered_sites": sorted(site_of[n] for n in out.recovered if n in site_of),
              "site_fates": {site_of[n]: fates[n] for n in sorted(site_of, key=site_of.get)}}
    return RoundAudit(
        replied=sorted(set(site_of.values()) - set(dropped)), dropped=dropped, rejected=rejected,
        accepted=[c["site_id"] for c in contributions if c["fate"] == "accepted"],
        contributions=contributions, secagg=secagg)

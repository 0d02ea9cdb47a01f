"""The SecAgg+ stages as message exchanges: what a secure round sends and decodes.

Helpers of `fedsilo.server.secagg_round.SecAggSession` (its one driver): one stage's
exchange over the Grid (`exchange`), a round's own setup and share stages
(`setup_and_share`), the next round's stages run ahead from this round's replies
(`keys_ahead`, `shares_ahead`), and what those leave for the next round (`PreAdvertised`,
`PreShared`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsilo.privacy.secagg import (
    KeyAdvert,
    SecAggAbort,
    SecAggConfig,
    SecAggServer,
    SetupRequest,
    SiteError,
)
from fedsilo.privacy.secagg.records import (
    MESSAGE_TYPES,
    RECORD_KEY,
    decode_next_keys,
    decode_next_shares,
    decode_reply,
    encode,
)
from fedsilo.server.messaging import send_and_receive

METRICS_KEY = "metrics"


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


def vector_length(train_content: RecordDict) -> int:
    arrays = train_content.get("arrays")
    if not isinstance(arrays, ArrayRecord) or not arrays:
        raise ValueError("train_content: expected an ArrayRecord 'arrays' holding the model "
                         "(its total size is the length of the masked update)")
    return int(sum(int(np.prod(a.shape)) for a in arrays.values()))


def exchange(grid: Grid, stage: str, requests: Mapping[int, object], server_round: int,
              timeout: float, extra: RecordDict | None,
              accepted: list[Message] | None = None,
              per_node: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
              types: Mapping[str, str] = MESSAGE_TYPES,
              ) -> tuple[dict[int, object], dict[int, dict[str, float]]]:
    """Send each site its request (plus the records in ``extra``, and in ``per_node`` for
    that site); decode the replies.

    ``accepted``, if given, collects the reply messages that were decoded (one per site,
    no errors), for records outside the stage's own. ``types``: the message type of each
    stage (a run's rounds use `MESSAGE_TYPES`; its statistics exchange its own, so that a
    site keeps that exchange's state apart).
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
                            message_type=types[stage], group_id=str(server_round)))
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


def setup_and_share(grid: Grid, server: SecAggServer, setup: SetupRequest,
                     preadvertised: PreAdvertised | PreShared | None, timeout: float,
                     timings: dict[str, float], site_metrics: dict[int, dict[str, float]],
                     types: Mapping[str, str] = MESSAGE_TYPES,
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
        replies, m = exchange(grid, "setup", dict.fromkeys(missing, setup), rnd, timeout, None,
                              types=types)
        site_metrics.update(m)
        keys.update(replies)
    t1 = time.perf_counter()
    reqs: Mapping[int, object] = server.on_keys(keys)
    timings["secagg_setup_server_s"] = time.perf_counter() - t1
    timings["secagg_setup_wall_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    replies, m = exchange(grid, "share", reqs, rnd, timeout, None, types=types)
    site_metrics.update(m)
    t1 = time.perf_counter()
    reqs = server.on_shares(replies)
    timings["secagg_share_server_s"] = time.perf_counter() - t1
    timings["secagg_share_wall_s"] = time.perf_counter() - t0
    return reqs, n_pre


def keys_ahead(config: SecAggConfig, run_id: str, next_round: int, nodes: list[int], d: int,
                keys: PreAdvertised) -> tuple[SecAggServer, Mapping[int, object]] | None:
    """The next round's setup stage, from the keys its sites advertised during this one:
    (its protocol state, share requests), or None if that stage aborts (the next round
    then starts with the keys alone)."""
    nxt = SecAggServer(config, run_id, next_round, nodes, d)
    try:
        return nxt, nxt.on_keys({n: keys.keys[n] for n in nodes})
    except SecAggAbort:
        return None


def shares_ahead(nxt: SecAggServer, setup: SetupRequest, replies: Iterable[Message]
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

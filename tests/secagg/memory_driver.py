"""In-memory protocol driver for tests: one full SecAgg+ round without any transport.

The protocol's state machines (`SecAggServer`, `SecAggClient`) stepped directly, stage by
stage; the server's one driver of secure rounds is `fedsilo.server.secagg_round.
SecAggSession` (over Flower's Message API). Hooks let a test drop sites at a stage,
tamper with requests (a malicious server / network) or replies (a malicious site), and
record everything the server receives. ``benchmarks/bench_secagg.py`` times the protocol's
compute with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedsilo.privacy.secagg.client import SecAggClient
from fedsilo.privacy.secagg.config import SecAggConfig
from fedsilo.privacy.secagg.errors import SecAggAbort, SecAggClientError
from fedsilo.privacy.secagg.messages import SiteError
from fedsilo.privacy.secagg.server import AggregateResult, SecAggServer

Tamper = Callable[[str, int, object], object]


@dataclass
class RoundReport:
    """What one in-memory round produced.

    ok / reason: success, or the abort reason. result: the aggregate when ok.
    dropped: per stage, the sites that left. reasons: per excluded site, why.
    received: every (stage, node, reply) the server received, in order (if recorded).
    server_seconds / server_cpu_seconds: server wall / CPU time per stage.
    site_seconds / site_cpu_seconds: per site, total wall / CPU time over all stages.
    """

    ok: bool
    reason: str | None
    result: AggregateResult | None
    dropped: dict[str, list[int]]
    reasons: dict[int, str]
    received: list[tuple[str, int, object]] = field(default_factory=list)
    server: SecAggServer | None = None
    server_seconds: dict[str, float] = field(default_factory=dict)
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)
    site_seconds: dict[int, float] = field(default_factory=dict)
    site_cpu_seconds: dict[int, float] = field(default_factory=dict)


def run_round(
    inputs: Mapping[int, tuple[np.ndarray, float]],
    config: SecAggConfig,
    *,
    run_id: str = "run",
    server_round: int = 1,
    drop: Mapping[str, Collection[int]] | None = None,
    tamper_request: Tamper | None = None,
    tamper_reply: Tamper | None = None,
    clients: Mapping[int, SecAggClient] | None = None,
    record: bool = True,
    unmask_workers: int | None = None,
) -> RoundReport:
    """Run the four stages between one server and ``len(inputs)`` in-memory sites.

    Parameters
    ----------
    inputs:
        node id -> (flat float update, weight).
    config:
        Protocol parameters.
    run_id, server_round:
        Round identity (bound into keys and the graph).
    drop:
        stage name -> sites that stop replying from that stage on.
    tamper_request / tamper_reply:
        ``f(stage, node, message) -> message`` applied to each request before the site
        sees it / each reply before the server sees it.
    clients:
        Optional pre-built site objects (e.g. a misbehaving subclass), by node id.
    record:
        Keep every reply in ``RoundReport.received`` (turn off for large benchmarks).
    unmask_workers:
        Passed to `SecAggServer` (processes for the unmask step; None = one per CPU).
    """
    drop = drop or {}
    d = len(next(iter(inputs.values()))[0])
    server = SecAggServer(config, run_id, server_round, list(inputs), d,
                          unmask_workers=unmask_workers)
    clients = {n: SecAggClient(n) for n in inputs} | dict(clients or {})
    received: list[tuple[str, int, object]] = []
    gone: set[int] = set()
    site_s = dict.fromkeys(inputs, 0.0)
    site_cpu = dict.fromkeys(inputs, 0.0)
    server_s: dict[str, float] = {}
    server_cpu: dict[str, float] = {}

    def exchange(stage: str, requests: Mapping[int, object]) -> dict[int, object]:
        gone.update(drop.get(stage, ()))
        replies: dict[int, object] = {}
        for n, req in requests.items():
            if n in gone:
                continue
            if tamper_request:
                req = tamper_request(stage, n, req)
            c = clients[n]
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                if stage == "setup":
                    rep: object = c.setup(req)  # type: ignore[arg-type]
                elif stage == "share":
                    rep = c.share(req)  # type: ignore[arg-type]
                elif stage == "masked":
                    rep = c.masked_input(req, *inputs[n])  # type: ignore[arg-type]
                else:
                    rep = c.unmask(req)  # type: ignore[arg-type]
            except SecAggClientError as e:
                rep = SiteError(str(e))
                gone.add(n)
            site_s[n] += time.perf_counter() - t0
            site_cpu[n] += time.process_time() - c0
            if tamper_reply:
                rep = tamper_reply(stage, n, rep)
            if record:
                received.append((stage, n, rep))
            replies[n] = rep
        return replies

    def timed(stage: str, step: Callable[[dict[int, object]], object],
              replies: dict[int, object]) -> object:
        t0, c0 = time.perf_counter(), time.process_time()
        out = step(replies)
        server_s[stage] = time.perf_counter() - t0
        server_cpu[stage] = time.process_time() - c0
        return out

    try:
        reqs: object = {n: server.setup_request() for n in inputs}
        for stage, step in (("setup", server.on_keys), ("share", server.on_shares),
                            ("masked", server.on_masked), ("unmask", server.on_unmask)):
            reqs = timed(stage, step, exchange(stage, reqs))  # type: ignore[arg-type]
    except SecAggAbort as e:
        return RoundReport(False, str(e), None, server.dropped, server.reasons, received, server,
                           server_s, server_cpu, site_s, site_cpu)
    assert isinstance(reqs, AggregateResult)
    return RoundReport(True, None, reqs, server.dropped, server.reasons, received, server,
                       server_s, server_cpu, site_s, site_cpu)

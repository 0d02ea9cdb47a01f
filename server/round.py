"""One round, as the few named steps of DESIGN.md's "One round, the natural way".

`run_round` reads as the round does:

==========  ===========================================================  ======================
step        what                                                         where
==========  ===========================================================  ======================
budget      DP: stop before a round that would exceed the budget         `privacy.dp`
sample      seeded draw over the sorted site ids                         `sample`
configure   the global model (trainable layers) and the round config     `configure`
exchange +  plain: ``send_and_receive``, then decode once, screen and    `plain_exchange`,
verify      check signatures into a batch; SecAgg+: the session's         `verify_replies`;
            stages, signatures checked as the replies arrive             `secure_exchange`
aggregate   the aggregator on the batch, or DP's clip-and-noise          `aggregate.aggregate`
step        the server optimiser; a non-finite model is never committed  `aggregate.step`
evaluate    central (if the task gives the server data) and per site     `evaluate`
monitor     flags from what the server saw; the policy's action          `monitoring.monitor`
record      checkpoint (atomic), then the signed round record            `record`
==========  ===========================================================  ======================

The steps work on the run's state, the `fedsilo.server.loop.FederationServer` (model,
optimiser, sampler, sites, store...). An evaluation-only run has one record of its own
(`scorecard`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsilo.common import codec
from fedsilo.common.protocol import with_attestation_prev
from fedsilo.lineage.fates import Fate
from fedsilo.server import monitoring, site_eval, task_round
from fedsilo.server.aggregate import aggregate, step
from fedsilo.server.faults import fault_point
from fedsilo.server.messaging import send_and_receive
from fedsilo.server.reply_digests import ReplyDigests
from fedsilo.server.spec import BudgetExhausted, MonitorStop, RoundSummary, SiteInfo
from fedsilo.server.verify_replies import Signer, round_audit, verify_plain

if TYPE_CHECKING:
    from fedsilo.server.loop import FederationServer


@dataclass
class Exchanged:
    """What a round's exchange and verify steps (and its aggregate step) produced, plain
    or secure: the sites' fates, their contributions, the update to apply (None: none)."""

    replied: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    contributions: list[dict[str, Any]] = field(default_factory=list)
    update: np.ndarray | None = None
    reason: str | None = None
    train_loss: float | None = None
    privacy: dict[str, Any] | None = None
    secagg: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    geometry: tuple[list[str], np.ndarray | None, np.ndarray | None] = ([], None, None)


def run_round(server: FederationServer, grid: Grid, server_round: int) -> RoundSummary:
    """Run round ``server_round``: every step, in order; return its summary."""
    t0 = time.perf_counter()
    if server.dp is not None:
        decision = server.dp.check_budget()
        if not decision.ok:
            raise BudgetExhausted(decision.reason, decision.epsilon_spent)
    sampled = sample(server)
    # the previous round's model_out is this round's model_in: digest the model once
    model_in = server.model_digest or server.digest(server.model)
    content = configure(server, server_round)
    if not sampled:
        ex = Exchanged(reason="no site was sampled this round (Poisson sampling)")
    elif server.secagg is not None:
        ex = secure_exchange(server, grid, server_round, sampled, content)
    else:
        ex = plain_exchange(server, grid, server_round, sampled, content)
    status, reason = "completed", ex.reason
    if ex.update is None:
        status, reason = "skipped", f"{reason}; global model unchanged"
    else:
        server.model, reason = step(server.optimizer, server.model, ex.update)
        status = "completed" if reason is None else "skipped"
    evaluated = evaluate(server, grid, server_round, sampled)
    flags = monitoring.monitor(server, server_round, sampled, ex, evaluated)
    evaluated.timings["total"] = time.perf_counter() - t0
    summary = record(server, server_round, sampled, ex, evaluated, model_in=model_in,
                     status=status, reason=reason, t0=t0, flags=flags)
    if server.monitor is not None and server.monitor.stop_reason is not None:
        raise MonitorStop(server.monitor.stop_reason)
    return summary


# ------------------------------------------------------------------ sample, configure
def sample(server: FederationServer) -> list[SiteInfo]:
    """Seeded draw over the sorted site ids: the same sites every run, whatever the node order.

    Fixed-size sampling without replacement, or Poisson sampling (each site
    independently with probability ``fraction``) when DP accounts for it.
    """
    cfg = server.spec.config
    pool = monitoring.eligible(server)
    if server.dp is not None and cfg.dp.sampling == "poisson" and cfg.fraction < 1.0:
        idx = np.flatnonzero(server.rng.random(len(pool)) < cfg.fraction)
    else:
        k = min(len(pool), cfg.sites_per_round)
        idx = np.sort(server.rng.choice(len(pool), size=k, replace=False))
    return [pool[i] for i in idx]


def next_sample_known(server: FederationServer) -> list[int] | None:
    """Node ids the next round will sample, if known before it: when every round
    samples every site (so its SecAgg+ share stage can ride on this round)."""
    cfg = server.spec.config
    if server.dp is not None and cfg.dp.sampling == "poisson" and cfg.fraction < 1.0:
        return None
    pool = monitoring.eligible(server)
    if cfg.sites_per_round < len(pool):
        return None
    return [s.node_id for s in pool]


def configure(server: FederationServer, server_round: int) -> RecordDict:
    """The train message's content: the global model's trainable layers, encoded once,
    the round config, the federation record and the task's statistics."""
    return RecordDict({
        codec.GLOBAL_RECORD: ArrayRecord(
            {codec.MODEL_KEY: codec.encode_flat(server.parts.wire(server.model))}),
        codec.CONFIG_RECORD: ConfigRecord(server.round_config(server_round)),
        codec.FEDERATION_RECORD: ConfigRecord(server.federation()),
        **task_round.statistics_records(server.statistics),
    })


# ------------------------------------------------------------------ exchange and verify
def plain_exchange(server: FederationServer, grid: Grid, server_round: int,
                   sampled: list[SiteInfo], content: RecordDict) -> Exchanged:
    """Send the model, receive plain updates, verify them into a batch, aggregate."""
    spec, cfg = server.spec, server.spec.config
    t0 = time.perf_counter()
    # each site's round config carries its own chain head (`RoundConfig.attestation_prev`)
    prevs = {s.site_id: server.store.attestation_prev(s.site_id) for s in sampled}
    msgs = [Message(with_attestation_prev(content, prevs[s.site_id]), dst_node_id=s.node_id,
                    message_type=MessageType.TRAIN)
            for s in sampled]
    # each reply is digested as it arrives, while the other sites still train: when the
    # last one is in, only its own digest is left before the signature checks
    with ReplyDigests() as digests:
        replies = send_and_receive(grid, msgs, timeout=cfg.round_timeout,
                                   on_reply=digests.submit)
        t_recv = time.perf_counter()
        fault_point("mid_round", server_round)
        verified = verify_plain(replies, sampled, layout=server.layout, policy=server.screening,
                                run_id=spec.run_id, server_round=server_round,
                                record_epsilon=cfg.record_dp.enabled, digests=digests,
                                prevs=prevs)
    batch = verified.batch
    if spec.attack_fn is not None and batch.n:
        batch = spec.attack_fn(server_round, batch)
    if spec.root_update_fn is not None and batch.n:
        batch = batch.with_root_update(
            spec.root_update_fn(server.parts.weights(server.model), server_round))
    t_agg = time.perf_counter()
    ex = Exchanged(replied=verified.replied, dropped=verified.dropped,
                   rejected=verified.rejected, contributions=verified.contributions,
                   train_loss=verified.train_loss)
    ex.update, ex.reason, ex.privacy = aggregate(
        batch, ex.contributions, ex.rejected, dp=server.dp, aggregator=server.aggregator,
        min_sites=cfg.min_sites, dim=server.layout.size)
    ex.accepted = [c["site_id"] for c in ex.contributions if c["fate"] == Fate.ACCEPTED]
    if server.monitor is not None:
        ex.geometry = monitoring.update_geometry(batch, ex.update)
    if cfg.record_dp.enabled:
        site_eps = verified.record_epsilon
        for c in ex.contributions:
            if c["site_id"] in site_eps:
                c["detail"]["record_epsilon"] = site_eps[c["site_id"]]
        ex.privacy = {**(ex.privacy or {}), "record_level": {
            "mechanism": "dp-sgd/opacus (per-sample clipping, Poisson batches, at each site)",
            "accountant": "opacus.rdp (each site's own)", "delta": cfg.record_dp.delta,
            "max_grad_norm": cfg.record_dp.max_grad_norm, "site_epsilon": site_eps}}
    ex.timings = {"train": t_recv - t0, "decode": t_agg - t_recv,
                  "aggregate": time.perf_counter() - t_agg}
    return ex


def secure_exchange(server: FederationServer, grid: Grid, server_round: int,
                    sampled: list[SiteInfo], content: RecordDict) -> Exchanged:
    """One SecAgg+ exchange (`SecAggSession.exchange`): the server learns only the
    (weighted) sum of the updates; the aggregate is that sum's mean, or DP's noisy sum."""
    cfg = server.spec.config
    assert server.secagg is not None
    t0 = time.perf_counter()
    site_of = {s.node_id: s.site_id for s in sampled}
    last = server_round >= cfg.rounds
    out = server.secagg.exchange(
        grid, [s.node_id for s in sampled], train_content=content, server_round=server_round,
        announce_next=not last, next_nodes=None if last else next_sample_known(server),
        signers={s.node_id: Signer(s.public_key, s.data_fingerprint) for s in sampled},
    )
    participants = sorted(site_of[n] for n in out.participants if n in site_of)
    # The server never sees an individual update: each contribution is the site's
    # signed masked vector (its digest and signature), with the site's fate in the sum.
    audit = round_audit(out, site_of)
    ex = Exchanged(replied=audit.replied, dropped=audit.dropped, rejected=audit.rejected,
                   accepted=audit.accepted, contributions=audit.contributions,
                   secagg=audit.secagg, train_loss=out.metrics.get("train_loss"))
    t_agg = time.perf_counter()
    if not out.ok or out.sum_delta is None:
        ex.reason = f"secure aggregation failed: {out.reason}"
    elif len(participants) < cfg.min_sites:
        ex.reason = f"{len(participants)} sites in the secure sum; min_sites is {cfg.min_sites}"
    elif server.dp is not None:
        result = server.dp.sum_noise(out.sum_delta, len(participants))
        ex.update, ex.privacy = result.update, result.lineage
    elif out.total_weight <= 0:
        ex.reason = "secure sum of weights is zero"
    else:
        ex.update = (out.sum_delta / np.float32(out.total_weight)).astype(np.float32)
    ex.timings = {"secagg": t_agg - t0, "aggregate": time.perf_counter() - t_agg}
    return ex


# ------------------------------------------------------------------ evaluate
@dataclass
class Evaluated:
    """The evaluate step's results: central loss and accuracy (None: no central
    evaluation), the new model's digest, the sites' signed scores and the replies left out."""

    test_loss: float | None
    test_accuracy: float | None
    model_out: str
    evaluations: list[dict[str, Any]]
    problems: dict[str, str]
    timings: dict[str, float]


def evaluate(server: FederationServer, grid: Grid, server_round: int,
             sampled: list[SiteInfo]) -> Evaluated:
    """Central evaluation of the new model, then (every ``eval_every`` rounds) the sampled
    sites' signed scores of it on their own held-out splits (`fedsilo.server.site_eval`)."""
    cfg = server.spec.config
    t_eval = time.perf_counter()
    test_loss = test_acc = None
    if server.spec.evaluate_fn is not None:
        test_loss, test_acc = server.spec.evaluate_fn(server.parts.weights(server.model))
    model_out = server.model_digest = server.digest(server.model)
    t_site = time.perf_counter()
    evaluations: list[dict[str, Any]] = []
    problems: dict[str, str] = {}
    if sampled and site_eval.evaluation_due(cfg.eval_every, server_round, cfg.rounds):
        evaluations, problems = evaluate_at(server, grid, server_round, sampled, model_out)
    t_end = time.perf_counter()
    timings = {"evaluate": t_site - t_eval}
    if evaluations or problems:
        timings["site_evaluate"] = t_end - t_site
    return Evaluated(test_loss, test_acc, model_out, evaluations, problems, timings)


def evaluate_at(server: FederationServer, grid: Grid, server_round: int,
                sites: list[SiteInfo], model_out: str
                ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``sites``' signed scores of the current model (`site_eval.exchange`)."""
    content = RecordDict({
        codec.GLOBAL_RECORD: ArrayRecord(
            {codec.MODEL_KEY: codec.encode_flat(server.parts.wire(server.model))}),
        **task_round.statistics_records(server.statistics),
        codec.CONFIG_RECORD: ConfigRecord({
            "run_id": server.spec.run_id, "server_round": server_round,
            "layout": server.parts.full.to_json(),
            "server_key_fingerprint": server.store.server_key_fingerprint()}),
        codec.FEDERATION_RECORD: ConfigRecord(server.federation()),
    })
    return site_eval.exchange(grid, sites, content, run_id=server.spec.run_id,
                              server_round=server_round, model_digest=model_out,
                              timeout=server.spec.config.round_timeout)


# ------------------------------------------------------------------ record
def record(server: FederationServer, server_round: int, sampled: list[SiteInfo],
           ex: Exchanged, ev: Evaluated, *, model_in: str, status: str, reason: str | None,
           t0: float, flags: list[dict[str, Any]] | None = None) -> RoundSummary:
    """The round's record and summary; then `RunStore.commit_round`: the checkpoint
    (carrying the record), then the record."""
    epsilon = _epsilon(server, ex.privacy)
    # a diverged model's NaN test loss is left out: JSON (and so the record) cannot hold it
    metrics = {k: v for k, v in (("train_loss", ex.train_loss), ("test_loss", ev.test_loss),
                                  ("test_accuracy", ev.test_accuracy), ("epsilon", epsilon))
               if v is not None and np.isfinite(v)}
    extra: dict[str, Any] = {}
    if server_round == 1 and server.rounds_in_budget is not None:
        # round 1's record states how many rounds the privacy budget fits (DP runs)
        extra["dp_budget"] = {"rounds_in_budget": server.rounds_in_budget,
                              "rounds_requested": server.spec.config.rounds}
    if ev.problems:
        extra["evaluation_problems"] = ev.problems
    if flags:
        extra["flags"] = flags
    if server.monitor is not None and server.monitor.excluded:
        extra["excluded"] = dict(server.monitor.excluded)
    completed = status == "completed"
    rec = server.round_record(
        server_round=server_round, sampled=[s.site_id for s in sampled],
        replied=ex.replied, accepted=ex.accepted if completed else [], rejected=ex.rejected,
        dropped=ex.dropped, contributions=ex.contributions if completed
        else [{**c, "fate": Fate.REJECTED, "detail": {"aggregation": "round skipped"}}
              for c in ex.contributions],
        model_in=model_in, model_out=ev.model_out, metrics=metrics,
        timings={**ex.timings, **ev.timings}, status=status, reason=reason,
        privacy=ex.privacy, secagg=ex.secagg, extra=extra,
        evaluations=[e for e in ev.evaluations if e["signature"]],
    )
    summary = RoundSummary(
        round=server_round, status=status, sampled=len(sampled), replied=len(ex.replied),
        accepted=(len(ex.accepted) or len((ex.secagg or {}).get("participant_sites", [])))
        if completed else 0, rejected=ex.rejected, train_loss=ex.train_loss,
        test_loss=ev.test_loss, test_accuracy=ev.test_accuracy,
        wall_time=time.perf_counter() - t0, model_digest=ev.model_out, epsilon=epsilon,
        reason=reason, site_eval=site_eval.summarise(ev.evaluations), flags=list(flags or []),
    )
    server.progress.add(status, summary.accepted, reason, ex.rejected)
    server.last_round = server_round
    server.store.commit_round(server_round, rec, server.checkpoint(
        server_round, pending=rec.to_dict(), summary=asdict(summary)))
    server.rounds_completed += completed
    return summary


def _epsilon(server: FederationServer, privacy: dict[str, Any] | None) -> float | None:
    """The round's cumulative epsilon: DP's, else the largest any site reports for its
    own records (record-level DP only), else None."""
    if privacy is not None and "epsilon_cumulative" in privacy:
        return privacy["epsilon_cumulative"]
    if server.dp is not None:
        return server.dp.accountant.get_epsilon()
    if privacy is not None and privacy.get("record_level", {}).get("site_epsilon"):
        return max(privacy["record_level"]["site_epsilon"].values())
    return None


# ------------------------------------------------------------------ evaluation only
def scorecard(server: FederationServer, grid: Grid) -> RoundSummary:
    """An evaluation-only run's one record (round 1): every site of the handshake
    scores the model, which stays as given (``model_in == model_out``, no
    contributions), so `lineage verify` checks the scorecard's site signatures as it
    checks any round's evaluations."""
    t0 = time.perf_counter()
    digest = server.model_digest = server.digest(server.model)
    test_loss = test_acc = None
    if server.spec.evaluate_fn is not None:
        test_loss, test_acc = server.spec.evaluate_fn(server.parts.weights(server.model))
    sites = sorted(server.sites, key=lambda s: s.site_id)
    evaluations, problems = evaluate_at(server, grid, 1, sites, digest)
    scored = [e["site_id"] for e in evaluations]
    reason = f"evaluation only: {len(scored)} of {len(sites)} sites scored the model"
    if problems:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
        reason += f" ({len(problems)} left out: {why})"
    metrics = {k: v for k, v in (("test_loss", test_loss), ("test_accuracy", test_acc))
               if v is not None and np.isfinite(v)}
    extra: dict[str, Any] = {"evaluation_only": True}
    if problems:
        extra["evaluation_problems"] = problems
    wall = time.perf_counter() - t0
    server.store.append(server.round_record(
        server_round=1, sampled=[s.site_id for s in sites], replied=scored,
        accepted=[], rejected={}, dropped=sorted(set(s.site_id for s in sites) - set(scored)),
        contributions=[], model_in=digest, model_out=digest, metrics=metrics,
        timings={"site_evaluate": wall, "total": wall}, status="completed", reason=None,
        privacy=None, secagg=None, extra=extra,
        evaluations=[e for e in evaluations if e["signature"]]))
    server.last_round = 1
    return RoundSummary(
        round=1, status="completed", sampled=len(sites), replied=len(scored), accepted=0,
        rejected=problems, train_loss=None, test_loss=test_loss, test_accuracy=test_acc,
        wall_time=wall, model_digest=digest, reason=reason,
        site_eval=site_eval.summarise(evaluations))


"""The server's round loop, on Flower's Message API.

One run: wait for the sites, one handshake query (stable site ids, keys, data
fingerprints, policies), then per round: seeded sampling over site ids, one encode of
the global model, ``send_and_receive``, one decode of the replies into an
`UpdateBatch` (screened, signatures checked), aggregation, server optimiser, central
evaluation, one lineage record and a checkpoint. See DESIGN.md, "One round".
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsilo import lineage
from fedsilo.lineage.records import _is_digest as is_digest
from fedsilo.lineage.signing import verify_declaration
from fedsilo.privacy.screening import ScreeningPolicy, example_count
from fedsilo.server import outcome, site_eval, task_round
from fedsilo.server.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    read_checkpoint,
    write_checkpoint,
    write_model,
)
from fedsilo.server.collector import FrozenObjects
from fedsilo.server.config import RunConfig, overreach
from fedsilo.server.faults import fault_point
from fedsilo.server.memory import LARGE_MODEL_VALUES, keep_freed_memory
from fedsilo.server.messaging import send_and_receive
from fedsilo.server.outcome import RunProgress
from fedsilo.server.stopping import RunInterrupted, check_stop
from fedsilo.strategies import codec, registry
from fedsilo.strategies.batch import UpdateBatch
from fedsilo.strategies.pipeline import batch_from_replies

if TYPE_CHECKING:  # the SecAgg+ modules load only when a run uses them
    from fedsilo.privacy.secagg import SecAggConfig, SetupRequest
    from fedsilo.server.secagg_round import PreAdvertised, PreShared


class FederationError(RuntimeError):
    """The federation cannot start or continue (not enough sites, refused policies...)."""


class BudgetExhausted(Exception):
    """The next round would exceed the privacy budget: end the run cleanly."""

    def __init__(self, reason: str, epsilon_spent: float) -> None:
        super().__init__(reason)
        self.epsilon_spent = epsilon_spent


@dataclass
class _Exchange:
    """What one round's exchange with the sites produced (plain or secure)."""

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


@dataclass
class SiteInfo:
    """What the handshake told the server about one site."""

    site_id: str
    node_id: int
    public_key: str
    data_fingerprint: str
    policy: str
    num_examples: int = 0
    """The example count the site declared (and signed) at the handshake: the bound of
    every count it reports in a round (0 only for a SiteInfo built outside a handshake)."""
    declaration: str = ""
    """The site's signature over (run id, site id, data fingerprint, count), kept in the
    genesis record so that a verifier can check the declaration long after the run."""
    app_digest: str = ""
    """Content digest of the app bundle the site checked and runs (its code policy's
    `fedsilo.client.app_code`), empty for a site that does not report one."""


@dataclass
class RoundSummary:
    """One round's outcome, for progress displays and ``metrics.json``."""

    round: int
    status: str
    sampled: int
    replied: int
    accepted: int
    rejected: dict[str, str]
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    wall_time: float
    model_digest: str
    epsilon: float | None = None
    reason: str | None = None
    site_eval: dict[str, Any] | None = None
    """The sampled sites' scores of the round's model on their own held-out splits, with
    mean and worst site (`fedsilo.server.site_eval.summarise`); None: not evaluated."""


@dataclass
class ServerSpec:
    """Everything the round loop needs besides the Grid.

    Parameters
    ----------
    config : the resolved run config.
    run_id : lineage run id.
    initial_weights : the initial global model, named layers.
    run_dir : where lineage, checkpoints and keys go (None: nothing written).
    federation : small config sent with every message (simulated sites build
        their data from it).
    evaluate_fn : central evaluation of a model: named layers -> (loss, accuracy).
    attack_fn : simulation only; rewrites malicious sites' updates (round, batch).
    root_update_fn : FLTrust's server update on its root dataset (weights, round).
    on_round : called after every round (progress display).
    server_key_path : the server's Ed25519 key (created 0600 if missing).
    expected_sites : wait for this many nodes before the handshake.
    node_wait_timeout : seconds to wait for ``expected_sites`` nodes to connect.
    resume : continue the run in ``run_dir`` from its last checkpoint (after a crash).
    simulation : a simulated federation (seeded DP noise unless configured otherwise).
    task_identity : the task's `fedsilo.tasks.TaskIdentity` as a dict: every site must
        present the same at the handshake; recorded in genesis (None: not checked).
    frozen_layers : layers of ``initial_weights`` the sites neither send back nor the
        server aggregates (they stay as initialised).
    statistics : ask every site for the task's statistics before round 1 and send their
        sum with every train and evaluate message (`fedsilo.server.task_round`).
    """

    config: RunConfig
    run_id: str
    initial_weights: dict[str, np.ndarray]
    run_dir: Path | None = None
    federation: dict[str, Any] = field(default_factory=dict)
    evaluate_fn: Callable[[dict[str, np.ndarray]], tuple[float, float]] | None = None
    attack_fn: Callable[[int, UpdateBatch], UpdateBatch] | None = None
    root_update_fn: Callable[[dict[str, np.ndarray], int], np.ndarray] | None = None
    on_round: Callable[[RoundSummary], None] | None = None
    server_key_path: Path | None = None
    expected_sites: int | None = None
    node_wait_timeout: float = 120.0
    resume: bool = False
    simulation: bool = True
    task_identity: dict[str, str] | None = None
    frozen_layers: tuple[str, ...] = ()
    statistics: bool = False
    evaluate_only: bool = False
    """``fedsilo evaluate``: no training; every site scores ``initial_weights`` once."""


@dataclass
class RunResult:
    """What a finished run produced.

    ``rounds`` are the rounds this process ran (the runner merges a resumed run's earlier
    ones from ``rounds.jsonl``); ``closing_reason`` is the run's status (see
    `fedsilo.server.outcome`), ``detail`` the closing record's detail (the progress made),
    ``rounds_changed`` the rounds of the whole run that changed the model.
    """

    rounds: list[RoundSummary]
    final_weights: dict[str, np.ndarray]
    final_digest: str
    closing_reason: str
    sites: list[SiteInfo]
    detail: str = ""
    rounds_changed: int = 0


class FederationServer:
    """Runs the rounds of one federation on a Flower `Grid`."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        cfg = spec.config
        # the server aggregates the trainable layers; the task's frozen ones ride along
        self.parts = task_round.ModelParts.split(spec.initial_weights, spec.frozen_layers)
        self.layout = self.parts.trainable
        self.statistics: dict[str, np.ndarray] | None = None
        self.statistics_record: dict[str, Any] | None = None
        if self.layout.size >= LARGE_MODEL_VALUES:
            # reuse last round's model-sized buffers instead of page-faulting fresh ones;
            # small models gain nothing, and the fixed thresholds made Ray rounds jitter
            keep_freed_memory()
        self.model = self.layout.flatten({k: spec.initial_weights[k] for k in self.layout.names})
        self.aggregator = registry.make_aggregator(cfg.aggregator)
        self.optimizer = registry.make_optimizer(cfg.optimizer)
        self.aggregator.validate(cfg.sites_per_round)
        try:  # a config built without `RunConfig.validate` must not start a run that cannot end
            cfg.check_rounds_possible()
        except ValueError as exc:
            raise FederationError(str(exc)) from None
        self.screening = ScreeningPolicy(max_norm=cfg.max_update_norm)
        self.rng = np.random.default_rng([cfg.seed, 0x5A3B1E])
        self.dp: Any = None
        if cfg.dp.enabled:
            from fedsilo.privacy.dp import ClientLevelDP

            poisson = cfg.dp.sampling == "poisson"
            q = cfg.fraction if poisson else cfg.sites_per_round / cfg.sites
            self.dp = ClientLevelDP(
                cfg.dp_config(simulation=spec.simulation), rounds=cfg.rounds, sample_rate=q,
                population=cfg.sites, expected_clients=q * cfg.sites, seed=cfg.seed,
            )
        self.sites: list[SiteInfo] = []
        self.writer: Any = None
        self.server_key: Any = None
        self.start_round = 1
        self.recovered: list[RoundSummary] = []  # rounds whose report a crash interrupted
        self._model_digest: str | None = None  # digest of self.model, set after each round
        # the model digest the chain's last record leaves current (what a closing record
        # must name): a round interrupted after its step but before its record leaves
        # self.model ahead of the chain, and is re-run on resume
        self._chain_model: str | None = None
        # SecAgg+ keys the sites advertised for the next secure round, with their handshake
        # or the previous round's unmask replies (not checkpointed: a resumed run asks
        # for them again with its handshake)
        self._secagg_keys: PreAdvertised | PreShared | None = None
        self.rounds_completed = 0  # round records with status "completed" in the chain
        self.progress = RunProgress()  # rounds of the whole run that changed the model
        self.last_round = 0  # the last round whose record is (or is about to be) on disk
        self.rounds_in_budget: int | None = None  # DP: rounds the epsilon budget allows
        self._persist_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsilo-persist")
        self._persisting: Future[None] | None = None

    # ------------------------------------------------------------------ run
    def run(self, grid: Grid) -> RunResult:
        spec, cfg = self.spec, self.spec.config
        summaries: list[RoundSummary] = []
        closing, detail = outcome.ERROR, "the run ended unexpectedly"
        frozen = FrozenObjects()
        if spec.resume:
            self._restore()
        else:
            self._open_lineage()
        try:
            self.sites = self._handshake(grid)
            self._query_statistics(grid)
            if spec.resume:
                self._check_resumed_sites()
                for summary in self.recovered:
                    if spec.on_round is not None:
                        spec.on_round(summary)
            else:
                self._append_genesis()
                self._announce_budget()
            if spec.evaluate_only:  # a separate path: the sites score the model, nothing trains
                summaries.append(self._scorecard(grid))
                if spec.on_round is not None:
                    spec.on_round(summaries[-1])
            for server_round in range(self.start_round,
                                      (0 if spec.evaluate_only else cfg.rounds) + 1):
                check_stop()  # a stop requested during the last round ends the run here
                summary = self._round(grid, server_round)
                summaries.append(summary)
                if spec.on_round is not None:
                    spec.on_round(summary)
                # after one round everything long-lived exists: keep it out of the full
                # collections that would otherwise pause later rounds (see `collector`)
                frozen.freeze()
            closing, detail = outcome.closing_status(self.progress, cfg.min_rounds_changed)
            if spec.evaluate_only:
                closing, detail = outcome.COMPLETED, str(summaries[0].reason)
        except BudgetExhausted as exc:
            closing, detail = outcome.closing_status(self.progress, cfg.min_rounds_changed, str(exc))
        except (KeyboardInterrupt, SystemExit, RunInterrupted) as exc:
            # SIGINT/SIGTERM (our handler's stop request, or a runtime's own handler): the
            # last checkpoint is on disk; resuming continues from it
            closing, detail = outcome.INTERRUPTED, str(exc) or "interrupted by the operator"
            raise
        except Exception as exc:
            closing, detail = outcome.ERROR, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            frozen.release()
            try:
                self._persist_wait()
                if closing in outcome.FINISHED:
                    # the final model is on disk before the closing record says the run ended
                    self._save_final_model()
            except Exception as exc:
                closing, detail = outcome.ERROR, f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self._persist_pool.shutdown(wait=True)
                self._close_lineage(closing, detail, self.rounds_completed)
        fault_point("after_closing", self.last_round)
        weights = self.parts.weights(self.model.copy())
        return RunResult(summaries, weights, lineage.arrays_digest(weights), closing, self.sites,
                         detail=detail, rounds_changed=self.progress.changed)

    def _save_final_model(self) -> None:
        """Write ``model.npz`` atomically (before the closing record: see `run`)."""
        fault_point("before_model", self.last_round)
        if self.spec.run_dir is not None:
            write_model(self.spec.run_dir, self.parts.weights(self.model.copy()))
        fault_point("before_closing", self.last_round)

    def _announce_budget(self) -> None:
        """Before round 1 of a DP run with a budget: say how many rounds fit it, and warn
        (one line on stderr) when fewer than requested; the first round record keeps it."""
        if self.dp is None:
            return
        requested = self.spec.config.rounds
        self.rounds_in_budget = self.dp.rounds_in_budget(requested)
        if self.rounds_in_budget is None:
            return
        eps = self.dp.config.epsilon
        text = (f"fedsilo: privacy budget epsilon={eps:g} at delta={self.dp.config.delta:g} "
                f"fits {self.rounds_in_budget} of {requested} requested rounds "
                f"(noise multiplier {self.dp.noise_multiplier:.4g})")
        if self.rounds_in_budget < requested:
            text = (f"{text}; warning: the run will stop after round {self.rounds_in_budget} "
                    "(budget_exhausted)")
        print(text, file=sys.stderr, flush=True)

    # ----------------------------------------------------------- handshake
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        want = self.spec.expected_sites or self.spec.config.sites
        deadline = time.monotonic() + self.spec.node_wait_timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= want:
                return nodes
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} of {want} sites connected within {self.spec.node_wait_timeout:.0f} s"
                )
            check_stop()
            time.sleep(0.5)

    def _handshake(self, grid: Grid) -> list[SiteInfo]:
        """Ask every connected node who it is; every expected site must answer."""
        nodes = self._wait_for_nodes(grid)
        content = RecordDict({codec.FEDERATION_RECORD: ConfigRecord(self._federation())})
        first = self._first_secagg_setup(len(nodes))
        if first is not None:  # the first secure round's keys come with the handshake
            from fedsilo.privacy.secagg.records import NEXT_KEY
            from fedsilo.server.secagg_round import keys_from_replies, setup_record

            content[NEXT_KEY] = setup_record(first)
        msgs = [Message(content, dst_node_id=n, message_type=f"{MessageType.QUERY}.handshake") for n in nodes]
        replies = send_and_receive(grid, msgs, timeout=self.spec.config.round_timeout)
        if first is not None:
            self._secagg_keys = keys_from_replies(first, replies)
        sites: dict[str, SiteInfo] = {}
        problems: list[str] = []
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                problems.append(f"node {node}: {reply.error.reason}")
                continue
            rec = codec.record(reply.content, codec.SITE_RECORD, ConfigRecord)
            if rec is None:
                problems.append(f"node {node}: no site record in its handshake reply")
                continue
            if not isinstance(rec.get("site_id"), str) or not rec["site_id"]:
                problems.append(f"node {node}: no site id in its handshake reply")
                continue
            info = SiteInfo(
                site_id=str(rec["site_id"]),
                node_id=node,
                public_key=str(rec.get("public_key", "")),
                data_fingerprint=str(rec.get("data_fingerprint", "")),
                policy=str(rec.get("policy", "{}")),
                app_digest=str(rec.get("app_digest", "")),
            )
            if info.app_digest and not is_digest(info.app_digest):  # never into genesis
                problems.append(f"node {node} ({info.site_id}): app digest "
                                f"{info.app_digest!r:.80} is not 'sha256:<64 hex>'")
                continue
            declared = task_round.identity_problem(self.spec.task_identity, rec) or \
                self._declared_examples(rec, info)
            if isinstance(declared, str):  # the site is refused: say why, in one line
                problems.append(f"node {node} ({info.site_id}): {declared}")
                continue
            info.num_examples = declared
            if info.public_key:
                info.declaration = str(rec.get("declaration", ""))
            if info.site_id in sites:
                raise FederationError(f"two nodes claim site id {info.site_id!r}")
            sites[info.site_id] = info
        want = self.spec.expected_sites or self.spec.config.sites
        if len(sites) < want:
            # A federation that silently runs with fewer sites than configured is worse
            # than one that does not start: say which nodes failed and why.
            detail = "; ".join(problems) or f"{len(nodes) - len(replies)} nodes did not answer"
            if not self.spec.resume:  # on record: who refused (e.g. a site's code policy) and why
                self.sites = [sites[s] for s in sorted(sites)]
                self._append_genesis([f"handshake: {p:.500}" for p in problems])
            raise FederationError(f"handshake: {len(sites)} of {want} sites answered ({detail})")
        return [sites[s] for s in sorted(sites)]

    def _declared_examples(self, rec: ConfigRecord, info: SiteInfo) -> int | str:
        """The example count a site declared at the handshake, or why the site is refused:
        no count, a count that is not a positive integer, or (for a site with a key) a
        signature over (run id, site id, data fingerprint, count) that does not verify."""
        if "num_examples" not in rec:
            return ("declared no example count (its Trainer must implement num_examples(), "
                    "see fedsilo.client.trainer.DeclaresExamples)")
        try:
            declared = example_count(rec["num_examples"])
        except ValueError as exc:
            return f"declared example count {exc}"
        signature = rec.get("declaration", "")
        if info.public_key and not verify_declaration(
            info.public_key, signature if isinstance(signature, str) else "", self.spec.run_id,
            info.site_id, info.data_fingerprint, declared,
        ):
            return f"the signature over its declared example count ({declared}) does not verify"
        return declared

    def _secagg_config(self) -> SecAggConfig:
        from fedsilo.privacy.secagg import SecAggConfig

        sa = self.spec.config.secagg
        return SecAggConfig(degree=sa.degree, threshold=sa.threshold, clip_range=sa.clip_range,
                            max_weight=sa.max_weight)

    def _first_secagg_setup(self, n_nodes: int) -> SetupRequest | None:
        """The setup request of the run's first SecAgg+ round (None without SecAgg), sent
        with the handshake. It assumes the round samples min(nodes, sites per round)
        sites; if it samples another number, its sites get a setup message instead."""
        cfg = self.spec.config
        if not cfg.secagg.enabled or self.start_round > cfg.rounds:
            return None
        from fedsilo.privacy.secagg import SetupRequest

        return SetupRequest(self.spec.run_id, self.start_round, self._secagg_config(),
                            self.layout.size, min(n_nodes, cfg.sites_per_round))

    def _federation(self) -> dict[str, Any]:
        return {"run_id": self.spec.run_id, **self.spec.federation}

    # --------------------------------------------------------------- round
    def _sample(self) -> list[SiteInfo]:
        """Seeded draw over the sorted site ids: the same sites every run, whatever the node order.

        Fixed-size sampling without replacement, or Poisson sampling (each site
        independently with probability ``fraction``) when DP accounts for it.
        """
        cfg = self.spec.config
        if self.dp is not None and cfg.dp.sampling == "poisson" and cfg.fraction < 1.0:
            idx = np.flatnonzero(self.rng.random(len(self.sites)) < cfg.fraction)
        else:
            k = min(len(self.sites), cfg.sites_per_round)
            idx = np.sort(self.rng.choice(len(self.sites), size=k, replace=False))
        return [self.sites[i] for i in idx]

    def _next_sample_known(self) -> list[int] | None:
        """Node ids the next round will sample, if known before it: when every round
        samples every site (so its SecAgg+ share stage can ride on this round)."""
        cfg = self.spec.config
        if self.dp is not None and cfg.dp.sampling == "poisson" and cfg.fraction < 1.0:
            return None
        if cfg.sites_per_round < len(self.sites):
            return None
        return [s.node_id for s in self.sites]

    def round_config(self, server_round: int) -> dict[str, Any]:
        cfg = self.spec.config
        return {
            "run_id": self.spec.run_id,
            "server_round": server_round,
            "lr": cfg.lr,
            "local_epochs": cfg.local_epochs,
            "rounds_total": cfg.rounds,
            "proximal_mu": cfg.proximal_mu,
            "aggregator": cfg.aggregator,
            "optimizer": cfg.optimizer,
            **self.parts.layout_config(),
            "server_key_fingerprint": self._server_key_fingerprint(),
            "secagg": cfg.secagg.enabled,
            **({f"dp_{k}": v for k, v in self.dp.round_config(server_round).items()}
               if self.dp is not None else {}),
            **({f"record_dp_{k}": v for k, v in vars(cfg.record_dp).items()
                if k != "enabled" and v is not None} if cfg.record_dp.enabled else {}),
        }

    def _round(self, grid: Grid, server_round: int) -> RoundSummary:
        cfg = self.spec.config
        t0 = time.perf_counter()
        if self.dp is not None:
            decision = self.dp.check_budget()
            if not decision.ok:
                raise BudgetExhausted(decision.reason, decision.epsilon_spent)
        sampled = self._sample()
        # the previous round's model_out is this round's model_in: digest the model once
        model_in = self._model_digest or self._digest(self.model)
        content = RecordDict(
            {
                codec.GLOBAL_RECORD: ArrayRecord(
                    {codec.MODEL_KEY: codec.encode_flat(self.parts.wire(self.model))}),
                codec.CONFIG_RECORD: ConfigRecord(self.round_config(server_round)),
                codec.FEDERATION_RECORD: ConfigRecord(self._federation()),
                **task_round.statistics_records(self.statistics),
            }
        )
        if not sampled:
            ex = _Exchange(reason="no site was sampled this round (Poisson sampling)")
        elif cfg.secagg.enabled:
            ex = self._secagg_exchange(grid, server_round, sampled, content)
        else:
            ex = self._plain_exchange(grid, server_round, sampled, content)

        status, reason = "completed", ex.reason
        if ex.update is None:
            status = "skipped"
            reason = f"{reason}; global model unchanged"
        else:
            reason = self._step(ex.update)
            status = "completed" if reason is None else "skipped"
        t_eval = time.perf_counter()
        test_loss = test_acc = None
        if self.spec.evaluate_fn is not None:
            test_loss, test_acc = self.spec.evaluate_fn(self.parts.weights(self.model))
        model_out = self._model_digest = self._digest(self.model)
        t_site = time.perf_counter()
        evaluations, eval_problems = self._site_evaluations(grid, server_round, sampled, model_out)
        t_end = time.perf_counter()

        epsilon = None
        if ex.privacy is not None and "epsilon_cumulative" in ex.privacy:
            epsilon = ex.privacy["epsilon_cumulative"]
        elif self.dp is not None:
            epsilon = self.dp.accountant.get_epsilon()
        elif ex.privacy is not None and ex.privacy.get("record_level", {}).get("site_epsilon"):
            # record-level DP only: the largest epsilon any site reports for its own records
            epsilon = max(ex.privacy["record_level"]["site_epsilon"].values())
        # a diverged model's NaN test loss is left out: JSON (and so the record) cannot hold it
        metrics = {k: v for k, v in (("train_loss", ex.train_loss), ("test_loss", test_loss),
                                      ("test_accuracy", test_acc), ("epsilon", epsilon))
                   if v is not None and np.isfinite(v)}
        timings = {**ex.timings, "evaluate": t_site - t_eval, "total": t_end - t0}
        if evaluations or eval_problems:
            timings["site_evaluate"] = t_end - t_site
        extra = self._first_round_extra(server_round)
        if eval_problems:
            extra["evaluation_problems"] = eval_problems
        record = self._round_record(
            server_round=server_round, sampled=[s.site_id for s in sampled], replied=ex.replied,
            accepted=ex.accepted if status == "completed" else [], rejected=ex.rejected,
            dropped=ex.dropped, contributions=ex.contributions if status == "completed"
            else [{**c, "fate": "rejected", "detail": {"aggregation": "round skipped"}}
                  for c in ex.contributions],
            model_in=model_in, model_out=model_out, metrics=metrics, timings=timings,
            status=status, reason=reason, privacy=ex.privacy, secagg=ex.secagg,
            extra=extra, evaluations=[e for e in evaluations if e["signature"]],
        )
        summary = RoundSummary(
            round=server_round, status=status, sampled=len(sampled), replied=len(ex.replied),
            accepted=(len(ex.accepted) or len((ex.secagg or {}).get("participant_sites", [])))
            if status == "completed" else 0, rejected=ex.rejected,
            train_loss=ex.train_loss, test_loss=test_loss, test_accuracy=test_acc,
            wall_time=time.perf_counter() - t0, model_digest=model_out, epsilon=epsilon,
            reason=reason, site_eval=site_eval.summarise(evaluations),
        )
        # Checkpoint first, carrying the round's record; then append the record. A crash
        # before the checkpoint re-runs the round; a crash after it re-appends the record
        # from the checkpoint on resume. Either way the chain has each round once.
        # Persisting (fsyncs) runs on one background thread, overlapped with the next
        # round's training; the next round's persistence waits for this one, and the run
        # waits for the last one before closing, so the order on disk never changes.
        # The checkpoint's state is captured here, on the round's thread: the next round
        # draws its sample (and, under SecAgg, may step the model) before the write runs.
        self.progress.add(status, summary.accepted, reason, ex.rejected)
        self.last_round = server_round
        self._persist_wait()
        ckpt = self._snapshot(server_round, pending=record, summary=summary)
        self._persisting = self._persist_pool.submit(self._persist, server_round, record, ckpt)
        self.rounds_completed += status == "completed"
        return summary

    def _site_evaluations(self, grid: Grid, server_round: int, sampled: list[SiteInfo],
                          model_out: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every ``eval_every`` rounds: the sampled sites' signed scores of the round's
        model on their own held-out splits (see `fedsilo.server.site_eval`)."""
        cfg = self.spec.config
        if not sampled or not site_eval.evaluation_due(cfg.eval_every, server_round, cfg.rounds):
            return [], {}
        return self._evaluate_at(grid, server_round, sampled, model_out)

    def _evaluate_at(self, grid: Grid, server_round: int, sites: list[SiteInfo],
                     model_out: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """``sites``' signed scores of the current model (`site_eval.exchange`)."""
        content = RecordDict({
            codec.GLOBAL_RECORD: ArrayRecord(
                {codec.MODEL_KEY: codec.encode_flat(self.parts.wire(self.model))}),
            **task_round.statistics_records(self.statistics),
            codec.CONFIG_RECORD: ConfigRecord({
                "run_id": self.spec.run_id, "server_round": server_round,
                "layout": self.parts.full.to_json(),
                "server_key_fingerprint": self._server_key_fingerprint()}),
            codec.FEDERATION_RECORD: ConfigRecord(self._federation()),
        })
        return site_eval.exchange(grid, sites, content, run_id=self.spec.run_id,
                                  server_round=server_round, model_digest=model_out,
                                  timeout=self.spec.config.round_timeout)

    def _scorecard(self, grid: Grid) -> RoundSummary:
        """An evaluation-only run's one record (round 1): every site of the handshake
        scores the model, which stays as given (``model_in == model_out``, no
        contributions), so `lineage verify` checks the scorecard's site signatures as it
        checks any round's evaluations."""
        t0 = time.perf_counter()
        digest = self._model_digest = self._digest(self.model)
        test_loss = test_acc = None
        if self.spec.evaluate_fn is not None:
            test_loss, test_acc = self.spec.evaluate_fn(self.parts.weights(self.model))
        sites = sorted(self.sites, key=lambda s: s.site_id)
        evaluations, problems = self._evaluate_at(grid, 1, sites, digest)
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
        self._append(self._round_record(
            server_round=1, sampled=[s.site_id for s in sites], replied=scored, accepted=[],
            rejected={}, dropped=sorted(set(s.site_id for s in sites) - set(scored)),
            contributions=[], model_in=digest, model_out=digest, metrics=metrics,
            timings={"site_evaluate": wall, "total": wall}, status="completed", reason=None,
            privacy=None, secagg=None, extra=extra,
            evaluations=[e for e in evaluations if e["signature"]]))
        self.last_round = 1
        return RoundSummary(
            round=1, status="completed", sampled=len(sites), replied=len(scored), accepted=0,
            rejected=problems, train_loss=None, test_loss=test_loss, test_accuracy=test_acc,
            wall_time=wall, model_digest=digest, reason=reason,
            site_eval=site_eval.summarise(evaluations))

    def _first_round_extra(self, server_round: int) -> dict[str, Any]:
        """Round 1's record states how many rounds the privacy budget fits (DP runs)."""
        if server_round != 1 or self.rounds_in_budget is None:
            return {}
        return {"dp_budget": {"rounds_in_budget": self.rounds_in_budget,
                              "rounds_requested": self.spec.config.rounds}}

    def _step(self, update: np.ndarray) -> str | None:
        """Apply the round's update through the server optimiser, unless the update or the
        new model is not finite: then the model and the optimiser's state stay as they were
        and the reason is returned (the round is recorded skipped), so that no reply, alone
        or with others, can make the global model non-finite."""
        bad = _non_finite(update)
        if bad:
            return f"aggregated update has {bad} non-finite values; global model unchanged"
        state = self.optimizer.state_dict()  # copies (the optimisers' contract)
        model = self.optimizer.step(self.model, update)
        bad = _non_finite(model)
        if bad:
            self.optimizer.load_state_dict(state)  # a step not taken leaves no trace
            return (f"new model would have {bad} non-finite values after the "
                    f"{self.optimizer.name} step; global model unchanged")
        self.model = model
        return None

    def _persist(self, server_round: int, record: Any, ckpt: Checkpoint | None) -> None:
        fault_point("before_checkpoint", server_round)
        if ckpt is not None:
            write_checkpoint(self.spec.run_dir, ckpt)
        fault_point("before_lineage", server_round)
        if self.writer is not None:
            self.writer.before_commit = lambda _type: fault_point("lineage_write", server_round)
        self._append(record)
        self._chain_model = record.model_out
        fault_point("after_round", server_round)

    def _persist_wait(self) -> None:
        """Block until the previous round is on disk (re-raising its error, if any)."""
        if self._persisting is not None:
            pending, self._persisting = self._persisting, None
            pending.result()

    def _plain_exchange(self, grid: Grid, server_round: int, sampled: list[SiteInfo],
                        content: RecordDict) -> _Exchange:
        """Send the model, receive plain updates, screen, check signatures, aggregate."""
        cfg = self.spec.config
        t0 = time.perf_counter()
        msgs = [Message(content, dst_node_id=s.node_id, message_type=MessageType.TRAIN) for s in sampled]
        replies = send_and_receive(grid, msgs, timeout=cfg.round_timeout)
        t_recv = time.perf_counter()
        # The previous round's checkpoint was written while the sites trained; make sure it
        # is on disk before this round goes further, so a crash from here on can resume
        # from it (waiting only after the submit below would leave a window with none).
        self._persist_wait()
        fault_point("mid_round", server_round)

        by_node = {s.node_id: s for s in sampled}
        site_of = {s.node_id: s.site_id for s in sampled}
        # Replies arrive in completion order; aggregate in site-id order so that float
        # sums, and hence the model digest, do not depend on which site finished first.
        replies = [r for r in replies if int(r.metadata.src_node_id) in site_of]
        replies.sort(key=lambda r: site_of[int(r.metadata.src_node_id)])
        refused: dict[str, str] = {}
        updates = []
        for r in replies:
            refusal = None if r.has_error() else codec.record(r.content, codec.REFUSAL_RECORD,
                                                               ConfigRecord)
            if refusal is not None:  # the site's policy said no; its reason goes to lineage
                refused[site_of[int(r.metadata.src_node_id)]] = f"refused by site: {refusal.get('reason', '')}"
            else:
                updates.append(r)
        refused.update(_duplicates(updates, site_of))  # none of a node's replies is used
        updates = [r for r in updates if site_of[int(r.metadata.src_node_id)] not in refused]
        # Sum-only aggregators get the weighted sum fused into screening (one pass over
        # each reply); anything that replaces rows later (attacks, DP) falls back safely.
        batch, rejected = batch_from_replies(
            updates, dim=self.layout.size, site_of=site_of, policy=self.screening,
            accumulate=self.dp is None and not self.aggregator.needs_individual_updates,
            gram=self.dp is None and self.aggregator.uses_gram,
            median=self.dp is None and self.aggregator.uses_median,
            declared_examples={s.node_id: s.num_examples for s in sampled if s.num_examples},
            layout=self.layout,
        )
        rejected.update(refused)
        ex = _Exchange(
            replied=sorted({site_of[int(r.metadata.src_node_id)] for r in replies}),
            rejected=rejected,
        )
        ex.dropped = sorted(set(site_of.values()) - set(ex.replied))
        ex.contributions, keep = self._check_signatures(replies, batch, rejected, by_node, server_round)
        batch = batch.subset(keep)
        ex.train_loss = self._mean_metric(replies, batch, "train_loss")
        if self.spec.attack_fn is not None and batch.n:
            batch = self.spec.attack_fn(server_round, batch)
        if self.spec.root_update_fn is not None and batch.n:
            batch.root_update = self.spec.root_update_fn(self.parts.weights(self.model), server_round)
        t_agg = time.perf_counter()
        fates: dict[str, str] = {}
        scores: dict[str, float] = {}
        if self.dp is not None:
            # Under DP every sampled round is released and accounted, even with few or no
            # updates: skipping it would reveal how many sampled sites answered.
            rows = batch.updates if batch.n else np.zeros((0, self.layout.size), np.float32)
            result = self.dp.aggregate(rows, batch.weights)
            fates = {batch.site_ids[i]: fate for i, fate in result.fates.items()}
            for i, why in result.reasons.items():
                rejected[batch.site_ids[i]] = why
            ex.update, ex.privacy = result.update, result.lineage
        elif batch.n < cfg.min_sites:
            ex.reason = f"{batch.n} usable updates; min_sites is {cfg.min_sites}"
        else:
            result = self.aggregator.aggregate(batch)
            fates = dict(zip(batch.site_ids, result.fates, strict=True))
            if result.scores is not None:
                scores = dict(zip(batch.site_ids, (float(s) for s in result.scores), strict=True))
            ex.update = result.update
        for c in ex.contributions:
            # lineage's fate says whether the update fed the model; the aggregator's own
            # verdict ("clipped", "trimmed", "rejected:krum"...) goes in the detail.
            fate = fates.get(c["site_id"], "rejected:not aggregated")
            c["fate"] = "rejected" if fate.startswith("rejected") else "accepted"
            c["detail"] = {"aggregation": fate}
            if c["site_id"] in scores:
                c["score"] = scores[c["site_id"]]
        ex.accepted = [c["site_id"] for c in ex.contributions if c["fate"] == "accepted"]
        if cfg.record_dp.enabled:
            site_eps = self._site_metric(replies, site_of, "record_epsilon")
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

    def _secagg_exchange(self, grid: Grid, server_round: int, sampled: list[SiteInfo],
                         content: RecordDict) -> _Exchange:
        """One SecAgg+ round: the server learns only the (weighted) sum of the updates."""
        from fedsilo.server.secagg_round import Signer, round_audit, run_secagg_round

        cfg = self.spec.config
        t0 = time.perf_counter()
        site_of = {s.node_id: s.site_id for s in sampled}
        out = run_secagg_round(
            grid, [s.node_id for s in sampled], train_content=content,
            config=self._secagg_config(),
            run_id=self.spec.run_id, server_round=server_round, timeout=cfg.round_timeout,
            vector_length=self.layout.size, preadvertised=self._secagg_keys,
            announce_next=server_round < cfg.rounds,
            next_nodes=self._next_sample_known() if server_round < cfg.rounds else None,
            signers={s.node_id: Signer(s.public_key, s.data_fingerprint) for s in sampled},
        )
        self._secagg_keys = out.next_keys
        participants = sorted(site_of[n] for n in out.participants if n in site_of)
        # The server never sees an individual update: each contribution is the site's
        # signed masked vector (its digest and signature), with the site's fate in the sum.
        audit = round_audit(out, site_of)
        ex = _Exchange(replied=audit.replied, dropped=audit.dropped, rejected=audit.rejected,
                       accepted=audit.accepted, contributions=audit.contributions,
                       secagg=audit.secagg)
        ex.train_loss = out.metrics.get("train_loss")
        t_agg = time.perf_counter()
        if not out.ok or out.sum_delta is None:
            ex.reason = f"secure aggregation failed: {out.reason}"
        elif len(participants) < cfg.min_sites:
            ex.reason = f"{len(participants)} sites in the secure sum; min_sites is {cfg.min_sites}"
        elif self.dp is not None:
            result = self.dp.sum_noise(out.sum_delta, len(participants))
            ex.update, ex.privacy = result.update, result.lineage
        elif out.total_weight <= 0:
            ex.reason = "secure sum of weights is zero"
        else:
            ex.update = (out.sum_delta / np.float32(out.total_weight)).astype(np.float32)
        ex.timings = {"secagg": t_agg - t0, "aggregate": time.perf_counter() - t_agg}
        return ex

    def _check_signatures(
        self,
        replies: list[Message],
        batch: UpdateBatch,
        rejected: dict[str, str],
        by_node: Mapping[int, SiteInfo],
        server_round: int,
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Recompute each update's digest and check the site's signature over it."""
        site_rec = {}
        for r in replies:
            rec = None if r.has_error() else codec.record(r.content, codec.SITE_RECORD, ConfigRecord)
            if rec is not None:
                site_rec[int(r.metadata.src_node_id)] = rec
        contributions, keep = [], []
        for i, (node, flat) in enumerate(zip(batch.node_ids, batch.updates, strict=True)):
            info, rec = by_node[node], site_rec.get(node, {})
            digest = lineage.update_digest(flat)
            fingerprint = str(rec.get("data_fingerprint", ""))
            signature = str(rec.get("signature", ""))
            problem = None
            if rec.get("site_id") != info.site_id:  # a reply speaking for another site
                problem = (f"site id {rec.get('site_id')!r:.80} differs from the one announced "
                           f"at the handshake ({info.site_id!r})")
            elif str(rec.get("update_digest", "")) != digest:
                problem = "update digest does not match the update received"
            elif fingerprint != info.data_fingerprint:
                problem = "data fingerprint differs from the one announced at the handshake"
            elif info.public_key and not lineage.verify_contribution(
                info.public_key, signature, self.spec.run_id, server_round, digest, fingerprint
            ):
                problem = "site signature does not verify"
            if problem is not None:
                rejected[info.site_id] = problem
                continue
            keep.append(i)
            contributions.append({
                "site_id": info.site_id, "update_digest": digest,
                "num_examples": int(batch.weights[i]), "data_fingerprint": fingerprint,
                "signature": signature,
            })
        return contributions, keep

    @staticmethod
    def _site_metric(replies: list[Message], site_of: Mapping[int, str], key: str) -> dict[str, float]:
        out = {}
        for r in replies:
            m = None if r.has_error() else codec.record(r.content, codec.METRICS_RECORD, MetricRecord)
            if m is None:
                continue
            if key in m:
                out[site_of[int(r.metadata.src_node_id)]] = float(m[key])
        return out

    @staticmethod
    def _mean_metric(replies: list[Message], batch: UpdateBatch, key: str) -> float | None:
        """Example-weighted mean of a metric over the accepted updates only, leaving out
        values that are not finite numbers: no reply's metrics (a NaN loss, a rejected
        reply's count of 1e39) can make the round record unwritable."""
        weight_of = dict(zip(batch.node_ids, batch.weights.tolist(), strict=True))
        vals, weights = [], []
        for r in replies:
            node = int(r.metadata.src_node_id)
            m = None if r.has_error() else codec.record(r.content, codec.METRICS_RECORD, MetricRecord)
            if m is None or node not in weight_of:
                continue
            value = _finite_number(m.get(key))
            if value is not None:
                vals.append(value)
                weights.append(weight_of[node])
        if not vals or sum(weights) <= 0:
            return None
        mean = float(np.average(vals, weights=weights))
        return mean if np.isfinite(mean) else None

    # -------------------------------------------------------------- lineage
    def _digest(self, flat: np.ndarray) -> str:
        return lineage.arrays_digest(self.parts.weights(flat))

    def _server_key_fingerprint(self) -> str:
        if self.server_key is None:
            return ""
        return lineage.key_fingerprint(lineage.public_key_hex(self.server_key))

    def _open_lineage(self) -> None:
        spec = self.spec
        if spec.server_key_path is not None:
            self.server_key = lineage.load_or_create_key(spec.server_key_path)
        if spec.run_dir is None or not spec.config.lineage:
            return
        if self.server_key is None:
            self.server_key = lineage.load_or_create_key(spec.run_dir / "keys" / "server.pem")
        self.writer = lineage.LineageWriter.create(spec.run_dir / "lineage.sqlite", self.server_key)

    def _append_genesis(self, problems: list[str] | None = None) -> None:
        if self.writer is None:
            return
        from fedsilo.server.provenance import code_version

        self.writer.append(
            lineage.GenesisRecord(
                run_id=self.spec.run_id,
                created_at=_now(),
                config=self.spec.config.to_dict(),
                code_version=code_version(),
                initial_model_digest=self._initial_digest(),
                server_public_key=lineage.public_key_hex(self.server_key),
                sites=[
                    lineage.SiteIdentity(
                        site_id=s.site_id, public_key=s.public_key,
                        data_fingerprint=s.data_fingerprint, policy=_json_dict(s.policy),
                        num_examples=s.num_examples or None,
                        declaration=s.declaration or None,
                        app_digest=s.app_digest or None,
                    )
                    for s in self.sites
                ],
                notes=self._genesis_notes() + list(problems or []),
                **self._genesis_task(),
            )
        )

    def _genesis_task(self) -> dict[str, Any]:
        """Genesis's ``task``: the task identity and, when queried, the summed statistics."""
        if self.spec.task_identity is None:
            return {}
        task: dict[str, Any] = dict(self.spec.task_identity)
        if self.statistics_record is not None:
            task["statistics"] = self.statistics_record
        return {"task": task}

    def _query_statistics(self, grid: Grid) -> None:
        """Before round 1 (and again on a resume): the sum of the sites' statistics."""
        if not self.spec.statistics:
            return
        from fedsilo.tasks.statistics import StatisticsError

        nodes = {s.node_id: s.site_id for s in self.sites}
        try:
            self.statistics, self.statistics_record = task_round.query_statistics(
                grid, nodes, self._federation(), self.spec.config.round_timeout)
        except StatisticsError as exc:
            raise FederationError(str(exc)) from None

    def _genesis_notes(self) -> list[str]:
        """What this run knowingly does outside a guarantee (recorded in genesis)."""
        found = overreach(self.spec.config)
        if found is None:
            return []
        how = "allowed by allow_overreach" if found[1] else "the aggregator states no tolerance"
        return [f"outside the aggregator's guarantee: {found[0]}; {how}"]

    def _round_record(self, *, server_round: int, contributions: list[dict[str, Any]],
                      evaluations: list[dict[str, Any]], **fields: Any) -> Any:
        from fedsilo.lineage.records import SiteEvaluation

        return lineage.RoundRecord(
            round=server_round,
            contributions=[lineage.SiteContribution(**c) for c in contributions],
            evaluations=[SiteEvaluation(**e) for e in evaluations],
            strategy={"aggregator": _describe(self.aggregator),
                      "optimizer": _describe(self.optimizer)},
            **fields,
        )

    def _append(self, record: Any) -> None:
        if self.writer is not None:
            self.writer.append(record)

    def _initial_digest(self) -> str:
        self._chain_model = self._digest(self.model)
        return self._chain_model

    def _close_lineage(self, reason: str, detail: str, rounds_completed: int) -> None:
        if self.writer is None:
            return
        if self.writer.head is None:  # the run failed before its genesis: nothing to close
            self.writer.close()
            return
        try:
            self.writer.append(
                lineage.ClosingRecord(
                    reason=reason, detail=detail, rounds_completed=rounds_completed,
                    final_model_digest=self._chain_model or self._digest(self.model),
                    epsilon_spent=self.dp.accountant.get_epsilon() if self.dp is not None else None,
                )
            )
        finally:
            self.writer.close()

    def _snapshot(self, server_round: int, pending: Any = None,
                  summary: RoundSummary | None = None) -> Checkpoint | None:
        """The server state after ``server_round``, independent of the live objects
        (None: no run dir), so that nothing the next round changes can reach the
        checkpoint while it waits for the persist thread.

        Copies are made once: optimiser ``state_dict`` returns copies (its contract),
        ``bit_generator.state`` is a fresh dict per access, ``to_dict``/``asdict`` copy deeply;
        the model (replaced each round, cheap next to the updates held) and the optional
        components' small state are copied here.
        """
        if self.spec.run_dir is None:
            return None
        return Checkpoint(
            round=server_round,
            model=self.model.copy(),
            optimizer_state=self.optimizer.state_dict(),
            rng_state=self.rng.bit_generator.state,
            lineage_head=self.writer.head if self.writer is not None else None,
            extra={"pending_record": pending.to_dict() if pending is not None else None,
                   "summary": asdict(summary) if summary is not None else None,
                   **copy.deepcopy(self._extra_state())},
        )

    def _extra_state(self) -> dict[str, Any]:
        """State of optional components (privacy accountant...) saved with each checkpoint."""
        out: dict[str, Any] = {"progress": self.progress.to_dict()}
        if self.dp is not None:
            out["dp"] = self.dp.state_dict()
        return out

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what `_extra_state` saved."""
        if self.dp is not None and extra.get("dp") is not None:
            self.dp.load_state_dict(extra["dp"])
        if extra.get("progress") is not None:
            self.progress = RunProgress.from_dict(extra["progress"])

    # --------------------------------------------------------------- resume
    def _restore(self) -> None:
        """Reload the last checkpoint and reopen the chain; append what the crash lost."""
        run_dir = self.spec.run_dir
        if run_dir is None:
            raise FederationError("resume needs a run directory")
        if not (run_dir / CHECKPOINT_NAME).exists():
            raise FederationError(f"{run_dir} has no checkpoint to resume from")
        ckpt = read_checkpoint(run_dir)
        if ckpt.model.shape != self.model.shape:
            raise FederationError(
                f"checkpoint model has {ckpt.model.size} values; this run's model has {self.model.size}"
            )
        self.model = ckpt.model.astype(np.float32)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.rng.bit_generator.state = ckpt.rng_state
        self._load_extra_state(ckpt.extra)
        self.start_round = ckpt.round + 1
        self.last_round = ckpt.round
        if not self.spec.config.lineage:
            return
        self.server_key = lineage.load_or_create_key(
            self.spec.server_key_path or run_dir / "keys" / "server.pem"
        )
        self.writer = lineage.LineageWriter.open(run_dir / "lineage.sqlite", self.server_key)
        rounds_in_chain = [
            r["body"] for r in lineage.read_chain(run_dir / "lineage.sqlite") if r["type"] == "round"
        ]
        self.rounds_completed = sum(r["status"] == "completed" for r in rounds_in_chain)
        last = rounds_in_chain[-1]["round"] if rounds_in_chain else 0
        pending = ckpt.extra.get("pending_record")
        if last < ckpt.round and pending is not None:
            record = lineage.RoundRecord.from_dict(pending)
            self.writer.append(record)
            self.rounds_completed += record.status == "completed"
            if ckpt.extra.get("summary"):
                self.recovered.append(RoundSummary(**ckpt.extra["summary"]))
            rounds_in_chain.append(record.to_dict())
        if "progress" not in ckpt.extra:  # a checkpoint written before progress was kept
            self.progress = RunProgress.from_bodies(rounds_in_chain)
        self._chain_model = self._digest(self.model)  # the checkpoint's model: round ckpt.round's
        self.writer.append(
            lineage.ResumeRecord(
                resumed_at=_now(), from_round=ckpt.round,
                reason="server restarted after an interruption; continuing from the last checkpoint",
            )
        )

    def _check_resumed_sites(self) -> None:
        """After a resume, sites must be the ones (same ids and keys) the genesis record names."""
        if self.spec.run_dir is None or not self.spec.config.lineage:
            return
        genesis = lineage.read_chain(self.spec.run_dir / "lineage.sqlite")[0]["body"]
        known = {s["site_id"]: s["public_key"] for s in genesis["sites"]}
        for site in self.sites:
            if site.site_id not in known:
                raise FederationError(f"site {site.site_id!r} was not part of this run at genesis")
            if known[site.site_id] != site.public_key:
                raise FederationError(f"site {site.site_id!r} presents a different key than at genesis")


def _finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite int or float (a site's metric), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        out = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return out if np.isfinite(out) else None


def _non_finite(values: np.ndarray) -> int:
    """How many values are NaN or infinite. Usually one pass: a finite sum means every
    value is finite (NaN and Inf propagate); only when the sum is not (non-finite values,
    or finite ones whose float32 sum overflowed) are the values counted one by one."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(values)):
            return 0
    return int(np.size(values) - np.count_nonzero(np.isfinite(values)))


def _duplicates(replies: list[Message], site_of: Mapping[int, str]) -> dict[str, str]:
    """Sites with more than one reply in the round (a replayed or duplicated message), with
    the reason none of their replies is used: which one to trust cannot be told."""
    counts: dict[int, int] = {}
    for r in replies:
        node = int(r.metadata.src_node_id)
        counts[node] = counts.get(node, 0) + 1
    return {site_of[node]: f"{k} replies in one round (replayed or duplicated); none used"
            for node, k in counts.items() if k > 1}


def _describe(strategy: Any) -> dict[str, Any]:
    """Name and parameter values of an aggregator or optimiser, for lineage."""
    params = {}
    for name in getattr(strategy, "params", {}):
        value = getattr(strategy, name, None)
        if isinstance(value, int | float | str | bool) or value is None:
            params[name] = value
    return {"name": strategy.name, "params": params}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json_dict(text: str) -> dict[str, Any]:
    import json

    try:
        out = json.loads(text)
    except ValueError:
        return {"raw": text}
    return out if isinstance(out, dict) else {"raw": text}

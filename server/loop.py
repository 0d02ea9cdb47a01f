"""The run, on Flower's Message API: handshake, rounds, close.

`FederationServer.run` is the whole run: wait for the sites and ask who they are
(`fedsilo.server.handshake`), the genesis record, then the rounds (each one the named
steps of `fedsilo.server.round`), then the final model and the closing record
(`fedsilo.server.outcome` says how the run ended). Everything the run writes goes
through its `RunStore` (`fedsilo.server.run_store`); a resumed run starts from the
store's last checkpoint. The server holds the run's state, which the round's steps read
and update: the global model, the optimiser, the seeded sampler, the sites, the privacy
accountant, the SecAgg+ session. See DESIGN.md, "One round".
"""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp import Grid

from fedsilo import lineage
from fedsilo.common.protocol import RoundConfig
from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.server import handshake, outcome, task_round
from fedsilo.server import round as round_steps
from fedsilo.server.checkpoint import Checkpoint
from fedsilo.server.faults import fault_point
from fedsilo.server.outcome import RunProgress
from fedsilo.server.run_store import RunStore
from fedsilo.server.spec import (
    BudgetExhausted,
    FederationError,
    MonitorStop,
    RoundSummary,
    RunResult,
    ServerSpec,
    SiteInfo,
)
from fedsilo.server.stopping import RunInterrupted, check_stop
from fedsilo.server.task_setup import profile_releases
from fedsilo.strategies import registry

if TYPE_CHECKING:  # the SecAgg+ modules load only when a run uses them
    from fedsilo.governance.monitor import Monitor
    from fedsilo.server.secagg_round import SecAggSession

__all__ = ["BudgetExhausted", "FederationError", "FederationServer", "RoundSummary",
           "RunResult", "ServerSpec", "SiteInfo"]


class FederationServer:
    """Runs the rounds of one federation on a Flower `Grid` (``spec``: `ServerSpec`)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        cfg = spec.config
        # the server aggregates the trainable layers; the task's frozen ones ride along
        self.parts = task_round.ModelParts.split(spec.initial_weights, spec.frozen_layers)
        self.layout = self.parts.trainable
        self.statistics: dict[str, np.ndarray] | None = None
        self.statistics_record: dict[str, Any] | None = None
        self.profile_sum: dict[str, np.ndarray] | None = None  # SecAgg+: the sites' profiles' sum
        self.profiles_record: dict[str, Any] | None = None  # genesis: the drift check's profiles
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
                releases=profile_releases(cfg, spec.profile),
            )
        self.secagg: SecAggSession | None = None
        if cfg.secagg.enabled:
            from fedsilo.privacy.secagg import SecAggConfig
            from fedsilo.server.secagg_round import SecAggSession

            sa = cfg.secagg
            self.secagg = SecAggSession(
                SecAggConfig(degree=sa.degree, threshold=sa.threshold, clip_range=sa.clip_range,
                             max_weight=sa.max_weight),
                spec.run_id, timeout=cfg.round_timeout, vector_length=self.layout.size)
        self.store = RunStore(spec.run_dir, lineage_on=cfg.lineage,
                              server_key_path=spec.server_key_path)
        self.store.run_id = spec.run_id  # sites' attestations name it (their chain heads)
        self.sites: list[SiteInfo] = []
        self.start_round = 1
        self.recovered: list[RoundSummary] = []  # rounds whose report a crash interrupted
        self.model_digest: str | None = None  # digest of self.model, set after each round
        self.rounds_completed = 0  # round records with status "completed" in the chain
        self.progress = RunProgress()  # rounds of the whole run that changed the model
        self.last_round = 0  # the last round whose record is (or is about to be) on disk
        self.rounds_in_budget: int | None = None  # DP: rounds the epsilon budget allows
        self.monitor: Monitor | None = None  # the run's flags (`fedsilo.governance.monitor`)
        monitor_config = cfg.monitor_config()
        if monitor_config.enabled:
            from fedsilo.governance.monitor import Monitor

            self.monitor = Monitor(monitor_config, secagg=cfg.secagg.enabled)

    # ------------------------------------------------------------------ run
    def run(self, grid: Grid) -> RunResult:
        """Handshake, rounds, close; the closing record says how the run ended."""
        spec = self.spec
        summaries: list[RoundSummary] = []
        closing, detail = outcome.ERROR, "the run ended unexpectedly"
        if spec.resume:
            self._restore()
        else:
            self.store.open()
        try:
            self._start(grid)
            summaries = self._rounds(grid)
            closing, detail = outcome.closing_status(self.progress, spec.config.min_rounds_changed)
            if spec.evaluate_only:
                closing, detail = outcome.COMPLETED, str(summaries[0].reason)
        except BudgetExhausted as exc:
            closing, detail = outcome.closing_status(
                self.progress, spec.config.min_rounds_changed, str(exc))
        except MonitorStop as exc:  # an error flag under on_error = "stop"
            closing = outcome.STOPPED_BY_MONITOR
            detail = f"{exc}; {self.progress.statement()}"
        except (KeyboardInterrupt, SystemExit, RunInterrupted) as exc:
            # SIGINT/SIGTERM (our handler's stop request, or a runtime's own handler): the
            # last checkpoint is on disk; resuming continues from it
            closing, detail = outcome.INTERRUPTED, str(exc) or "interrupted by the operator"
            raise
        except Exception as exc:
            closing, detail = outcome.ERROR, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            try:
                if closing in outcome.FINISHED:
                    # the final model is on disk before the closing record says the run ended
                    self.store.save_final_model(self.parts.weights(self.model.copy()),
                                                self.last_round)
            except Exception as exc:
                closing, detail = outcome.ERROR, f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self.store.close(closing, detail, self.rounds_completed, self.digest(self.model),
                                 self.dp.accountant.get_epsilon() if self.dp is not None else None)
        fault_point("after_closing", self.last_round)
        weights = self.parts.weights(self.model.copy())
        return RunResult(summaries, weights, lineage.arrays_digest(weights), closing, self.sites,
                         detail=detail, rounds_changed=self.progress.changed)

    def _start(self, grid: Grid) -> None:
        """The handshake, the task's statistics, then genesis (a new run) or the check
        that the sites are genesis's (a resumed run)."""
        spec = self.spec
        try:
            self.sites = handshake.handshake(grid, spec, self.federation(not spec.resume),
                                             self.secagg, self.start_round)
        except handshake.HandshakeFailed as exc:
            if not spec.resume:  # on record: who refused (e.g. a site's code policy) and why
                self.sites = exc.sites
                self._append_genesis([f"handshake: {p:.500}" for p in exc.problems])
            # the closing record names the error as users know it (FederationError)
            raise FederationError(str(exc)) from exc
        self._query_statistics(grid)
        if not spec.resume:
            self._check_drift()
        if spec.resume:
            handshake.check_resumed_sites(self.sites, self.store.genesis_keys())
            for summary in self.recovered:
                if spec.on_round is not None:
                    spec.on_round(summary)
        else:
            self._append_genesis()
            self._announce_budget()

    def _rounds(self, grid: Grid) -> list[RoundSummary]:
        """Every round this process runs (or the evaluation-only scorecard)."""
        spec = self.spec
        summaries: list[RoundSummary] = []
        if spec.evaluate_only:  # a separate path: the sites score the model, nothing trains
            summaries.append(round_steps.scorecard(self, grid))
            if spec.on_round is not None:
                spec.on_round(summaries[-1])
        last = 0 if spec.evaluate_only else spec.config.rounds
        for server_round in range(self.start_round, last + 1):
            check_stop()  # a stop requested during the last round ends the run here
            summary = round_steps.run_round(self, grid, server_round)
            summaries.append(summary)
            if spec.on_round is not None:
                spec.on_round(summary)
            fault_point("after_round", server_round)  # on disk and reported
        return summaries

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

    def _query_statistics(self, grid: Grid) -> None:
        """Before round 1 (and again on a resume): the sum of the sites' statistics (and,
        under SecAgg+, of their data profiles: a new run's drift check)."""
        secure_profiles = self.spec.profile and self.secagg is not None and not self.spec.resume
        if not (self.spec.statistics or secure_profiles):
            return
        from fedsilo.tasks.statistics import StatisticsError

        nodes = {s.node_id: s.site_id for s in self.sites}
        try:  # under SecAgg+ the sum is taken securely (the server never sees a site's)
            self.statistics, self.statistics_record, self.profile_sum = \
                task_round.query_statistics(grid, nodes, self.federation(secure_profiles),
                                            self.spec.config.round_timeout, secagg=self.secagg)
        except StatisticsError as exc:
            raise FederationError(str(exc)) from None

    def _check_drift(self) -> None:
        """A new run's drift check: the sites' data profiles against the baseline's and the
        federation's; genesis keeps them, the monitor raises the findings in round 1."""
        if not self.spec.profile or self.monitor is None:
            return
        from fedsilo.server import data_profiles

        self.profiles_record, findings = data_profiles.collect(
            self.sites, self.profile_sum, self.spec.baseline, self.monitor.config, self.dp,
            record_noise=(self.spec.config.record_dp.profile_noise_multiplier
                          if self.spec.config.record_dp.enabled else None))
        self.monitor.start_findings(findings)

    def _append_genesis(self, problems: list[str] | None = None) -> None:
        if self.store.writer is None:
            return
        initial = self.store.chain_model = self.digest(self.model)
        self.store.append(handshake.genesis_record(
            self.spec, self.sites, initial_model_digest=initial,
            server_key=self.store.server_key, statistics_record=self.statistics_record,
            profiles_record=self.profiles_record,
            problems=problems))

    # ------------------------------------------------------------ what the round reads
    def round_config(self, server_round: int) -> dict[str, Any]:
        """The round config every sampled site gets with the model (the wire contract:
        `fedsilo.common.protocol.RoundConfig`), as the items of its ``config`` record."""
        cfg = self.spec.config
        layouts = self.parts.layout_config()
        return RoundConfig(
            run_id=self.spec.run_id, server_round=server_round, lr=cfg.lr,
            local_epochs=cfg.local_epochs, rounds_total=cfg.rounds, proximal_mu=cfg.proximal_mu,
            aggregator=cfg.aggregator, optimizer=cfg.optimizer, layout=layouts["layout"],
            update_layout=layouts.get("update_layout"),
            server_key_fingerprint=self.store.server_key_fingerprint(),
            secagg=cfg.secagg.enabled,
            dp=self.dp.round_config(server_round) if self.dp is not None else None,
            record_dp={k: v for k, v in vars(cfg.record_dp).items()
                       if k != "enabled" and v is not None} if cfg.record_dp.enabled else None,
        ).to_dict()

    def federation(self, profiles: bool = False) -> dict[str, Any]:
        """The small config sent with every message (simulated sites build their data from
        it); ``profiles``: it asks for the sites' data profiles (the handshake's, or the
        statistics query's under SecAgg+)."""
        from fedsilo.server.data_profiles import request

        rdp = self.spec.config.record_dp
        ask = request(profiles and self.spec.profile, self.secagg is not None, self.dp is not None,
                      rdp.profile_noise_multiplier if rdp.enabled else None)
        return {"run_id": self.spec.run_id, **self.spec.federation, **ask}

    def digest(self, flat: np.ndarray) -> str:
        """The lineage digest of the whole model (frozen layers included) for ``flat``."""
        return lineage.arrays_digest(self.parts.weights(flat))

    def round_record(self, *, server_round: int, contributions: list[dict[str, Any]],
                     evaluations: list[dict[str, Any]], **fields: Any) -> Any:
        """A `lineage.RoundRecord` with this run's strategy (aggregator and optimiser)."""
        from fedsilo.lineage.records import SiteEvaluation

        return lineage.RoundRecord(
            round=server_round,
            contributions=[lineage.SiteContribution(**c) for c in contributions],
            evaluations=[SiteEvaluation(**e) for e in evaluations],
            strategy={"aggregator": _describe(self.aggregator),
                      "optimizer": _describe(self.optimizer)},
            **fields,
        )

    def checkpoint(self, server_round: int, pending: dict[str, Any] | None = None,
                   summary: dict[str, Any] | None = None) -> Checkpoint | None:
        """The server state after ``server_round`` (None: no run dir), carrying the round's
        record (``pending``) and summary, independent of the live objects.

        Copies are made once: optimiser ``state_dict`` returns copies (its contract),
        ``bit_generator.state`` is a fresh dict per access; the model and the optional
        components' small state are copied here.
        """
        if self.spec.run_dir is None:
            return None
        extra: dict[str, Any] = {"progress": self.progress.to_dict()}
        if self.dp is not None:
            extra["dp"] = self.dp.state_dict()
        if self.monitor is not None:
            extra["monitor"] = self.monitor.state_dict()
        return Checkpoint(
            round=server_round,
            model=self.model.copy(),
            optimizer_state=self.optimizer.state_dict(),
            rng_state=self.rng.bit_generator.state,
            lineage_head=self.store.writer.head if self.store.writer is not None else None,
            extra={"pending_record": pending, "summary": summary, **copy.deepcopy(extra)},
        )

    # --------------------------------------------------------------- resume
    def _restore(self) -> None:
        """Reload the last checkpoint and reopen the chain; append what the crash lost."""
        ckpt = self.store.read_checkpoint(self.model.size)
        self.model = ckpt.model.astype(np.float32)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.rng.bit_generator.state = ckpt.rng_state
        if self.dp is not None and ckpt.extra.get("dp") is not None:
            self.dp.load_state_dict(ckpt.extra["dp"])
        if ckpt.extra.get("progress") is not None:
            self.progress = RunProgress.from_dict(ckpt.extra["progress"])
        if self.monitor is not None and ckpt.extra.get("monitor") is not None:
            self.monitor.load_state_dict(ckpt.extra["monitor"])
        self.start_round = ckpt.round + 1
        self.last_round = ckpt.round
        # the checkpoint's model is round ckpt.round's: what the chain leaves current
        reopened = self.store.reopen(ckpt, self.digest(self.model))
        if not self.store.lineage_on:
            return
        self.rounds_completed = reopened.rounds_completed
        if reopened.recovered_summary is not None:
            self.recovered.append(RoundSummary(**reopened.recovered_summary))
        if "progress" not in ckpt.extra:  # a checkpoint written before progress was kept
            self.progress = RunProgress.from_bodies(reopened.round_bodies)


def _describe(strategy: Any) -> dict[str, Any]:
    """Name and parameter values of an aggregator or optimiser, for lineage."""
    params = {}
    for name in getattr(strategy, "params", {}):
        value = getattr(strategy, name, None)
        if isinstance(value, int | float | str | bool) or value is None:
            params[name] = value
    return {"name": strategy.name, "params": params}

"""`run_federation`: one complete simulated federation, from config to run directory.

A run directory (``<out>/<run-id>/``) holds ``config.toml`` (the resolved config),
``lineage.sqlite`` (signed chain), ``checkpoint.npz``, ``rounds.jsonl`` (each round's
summary, once per round, kept across crashes), ``sites/<site-id>/`` (each simulated
site's key and ledger), and, once the run has finished, ``model.npz``, ``metrics.json``
and ``report.html``. The server writes ``model.npz`` (atomically) before the closing
record; ``metrics.json`` and then ``report.html`` come after it, so a directory without
``report.html`` is not a finished run, and ``--resume`` finishes its outputs.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedsilo import lineage
from fedsilo.client.app import make_client_app
from fedsilo.server.app import ServerOutcome, make_server_app
from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.server.loop import RoundSummary, RunResult, ServerSpec
from fedsilo.server.task_setup import server_task, task_options
from fedsilo.simulations.engine import run_on_simulation_engine
from fedsilo.simulations.partition import PartitionError, PartitionSpec, partition
from fedsilo.simulations.scenario import malicious_sites, site_id
from fedsilo.simulations.sites import simulated_site
from fedsilo.simulations.user_data import resolve_config as resolve_user_data
from fedsilo.tasks.datasets import DATASETS, Dataset, load_dataset


@dataclass
class SimulationRun:
    """What `run_federation` returns (``result.rounds``: every round of the run, once,
    including those run before a resume)."""

    run_id: str
    run_dir: Path
    result: RunResult
    final_digest: str
    resumed_from: list[int] = field(default_factory=list)  # each resume's checkpoint round

    @property
    def rounds(self) -> list[RoundSummary]:
        return self.result.rounds

    @property
    def final_accuracy(self) -> float | None:
        return self.rounds[-1].test_accuracy if self.rounds else None


def new_run_id() -> str:
    """A fresh run id: UTC time plus 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def check_feasible(config: RunConfig) -> None:
    """Checks that need the task or the data (the task builds, ``init_model`` fits it,
    sites vs samples, shards); `ConfigError` on failure, before anything is written."""
    config = resolve_user_data(config)  # a user's files: readable, sites found
    server_task(config)
    data = bundled_data(config)
    if data is not None:
        try:
            partition(data.y_train, config.sites, PartitionSpec.parse(config.partition), config.seed)
        except PartitionError as exc:
            flag = "--sites" if "exceeds" in str(exc) else "--partition"
            raise ConfigError(f"{flag}: {exc}") from None
    elif config.aggregator.split(":")[0] == "fltrust":
        raise ConfigError(f"--aggregator: fltrust needs a server root set, which only the "
                          f"bundled tasks provide ({', '.join(DATASETS)}); --task is {config.task}")
    _strategy_check(config)


def bundled_data(config: RunConfig) -> Dataset | None:
    """The bundled dataset of the run's task (None for any other task)."""
    if config.task not in DATASETS:
        return None
    return load_dataset(config.task, seed=int(task_options(config)["seed"]))


def _strategy_check(config: RunConfig) -> None:
    from fedsilo.strategies import registry

    for flag, make, spec in (("--aggregator", registry.make_aggregator, config.aggregator),
                             ("--optimizer", registry.make_optimizer, config.optimizer)):
        try:
            obj = make(spec)
            if flag == "--aggregator":
                obj.validate(config.sites_per_round)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
    if config.dp.enabled:
        from fedsilo.privacy.dp import ClientLevelDP

        poisson = config.dp.sampling == "poisson"
        q = config.fraction if poisson else config.sites_per_round / config.sites
        try:  # calibrates or checks the noise multiplier against the budget
            ClientLevelDP(config.dp_config(), rounds=config.rounds, sample_rate=q,
                          population=config.sites, expected_clients=q * config.sites, seed=0)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise ConfigError(f"--dp-{field.replace('_', '-')}: {message}") from None
    if config.secagg.enabled:
        agg = registry.make_aggregator(config.aggregator)
        if agg.needs_individual_updates:
            raise ConfigError(
                f"--aggregator: {agg.name} needs each site's individual update, which secure "
                "aggregation hides from the server (it learns only the sum); use mean with --secagg"
            )
        if config.attack and config.attack != "label_flip":
            raise ConfigError("--attack: model-poisoning attacks need individual updates; "
                              "with --secagg only label_flip can be simulated")
    if config.attack:
        from fedsilo.simulations.attacks import ATTACKS

        if config.attack not in ATTACKS:
            raise ConfigError(
                f"--attack: unknown attack {config.attack!r}; accepted: {', '.join(sorted(ATTACKS))}"
            )
        from fedsilo.server.config import overreach

        found = overreach(config)
        if found is not None and found[1] and not config.allow_overreach:
            raise ConfigError(f"--malicious: {found[0]}; pass --allow-overreach to run "
                              "outside the aggregator's guarantee")


def run_federation(
    config: RunConfig,
    *,
    on_round: Callable[[RoundSummary], None] | None = None,
    verbose: bool = False,
    engine: str = "ray",
    evaluate_only: bool = False,
) -> SimulationRun:
    """Run ``config`` and write the run directory.

    Parameters
    ----------
    config : the validated run config.
    on_round : called with each round's summary (progress display).
    verbose : show Flower's and Ray's logs.
    engine : ``"ray"`` (Flower's simulation engine, the default) or ``"inprocess"``
        (the same apps on `fedsilo.simulations.inprocess.InProcessGrid`, no Ray:
        for benchmark sweeps of many small runs).
    evaluate_only : no training: every site scores the initial model (``init_model``)
        once (``fedsilo evaluate``).
    """
    if engine not in ("ray", "inprocess"):
        raise ValueError(f"engine must be 'ray' or 'inprocess', got {engine!r}")
    config = resolve_user_data(config)  # absolute data path; sites named by the data
    check_feasible(config)
    run_id = config.run_id or new_run_id()
    run_dir = Path(config.out) / run_id
    if (run_dir / "lineage.sqlite").exists() or (run_dir / "model.npz").exists():
        raise ConfigError(f"--run-id: run directory {run_dir} already holds a run")
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = RunConfig.from_dict({**config.to_dict(), "run_id": run_id})
    (run_dir / "config.toml").write_text(tomli_w.dumps(resolved.to_dict()))

    spec = build_server_spec(resolved, run_dir, on_round=on_round)
    spec.evaluate_only = evaluate_only
    return _execute(spec, resolved, run_dir, verbose=verbose, engine=engine)


def resume_federation(
    run_dir: Path,
    *,
    on_round: Callable[[RoundSummary], None] | None = None,
    verbose: bool = False,
    engine: str = "ray",
) -> SimulationRun:
    """Continue the crashed run in ``run_dir`` from its last checkpoint.

    The config comes from ``run_dir/config.toml``; the model, optimiser and sampling
    state from ``checkpoint.npz``; the lineage chain is reopened (its head checked) and
    gets a resume record. With the same seed the final model equals an uninterrupted run's.
    A run whose chain is already closed (it crashed while writing its outputs) is not
    run again: its outputs are finished from the checkpoint and the chain.
    """
    from fedsilo.server.checkpoint import read_checkpoint, resumable_config

    run_dir = Path(run_dir)
    config = resumable_config(run_dir)
    if closed_run(run_dir, config) is not None:
        return finish_outputs(run_dir, config, simulated=True)
    prune_round_log(run_dir, read_checkpoint(run_dir).round)
    spec = build_server_spec(config, run_dir, on_round=on_round)
    spec.resume = True
    return _execute(spec, config, run_dir, verbose=verbose, engine=engine)


def closed_run(run_dir: Path, config: RunConfig) -> dict[str, Any] | None:
    """The closing record's body when the chain of ``run_dir`` says the run is over
    (completed, no_progress, budget_exhausted), else None."""
    from fedsilo.server.outcome import FINISHED

    db = run_dir / "lineage.sqlite"
    if not config.lineage or not db.exists():
        return None
    chain = lineage.read_chain(db)
    if chain and chain[-1]["type"] == "closing" and chain[-1]["body"]["reason"] in FINISHED:
        return dict(chain[-1]["body"])
    return None


def finish_outputs(run_dir: Path, config: RunConfig, *, simulated: bool) -> SimulationRun:
    """Write what a crash after the closing record left out: ``model.npz`` (from the
    checkpoint, checked against the closing record's digest), ``metrics.json`` and
    ``report.html`` (from ``rounds.jsonl`` and the chain)."""
    from fedsilo.server.checkpoint import MODEL_NAME, read_checkpoint, write_model
    from fedsilo.server.loop import SiteInfo
    from fedsilo.server.outcome import RunProgress
    from fedsilo.server.task_round import ModelParts

    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    closing = chain[-1]["body"]
    expected = closing["final_model_digest"]
    spec = build_server_spec(config, run_dir)
    parts = ModelParts.split(spec.initial_weights, spec.frozen_layers)
    weights = _saved_model(run_dir / MODEL_NAME)
    if weights is None or lineage.arrays_digest(weights) != expected:
        weights = parts.weights(read_checkpoint(run_dir).model.astype(np.float32))
        if lineage.arrays_digest(weights) != expected:
            raise ConfigError(f"--resume: {run_dir}: the checkpoint's model is not the final model "
                              f"{expected} of the closing record; cannot finish the outputs")
        write_model(run_dir, weights)
    genesis = chain[0]["body"]
    declares = "num_examples" in {f.name for f in fields(SiteInfo)}  # the handshake's count
    sites = [SiteInfo(site_id=s["site_id"], node_id=0, public_key=s["public_key"],
                      data_fingerprint=s["data_fingerprint"], policy=json.dumps(s["policy"]),
                      **({"num_examples": s.get("num_examples")} if declares else {}))
             for s in genesis["sites"]]
    progress = RunProgress.from_bodies([r["body"] for r in chain if r["type"] == "round"])
    result = RunResult([], weights, expected, closing["reason"], sites,
                       detail=closing["detail"], rounds_changed=progress.changed)
    data = bundled_data(config) if simulated else None
    result = write_outputs(run_dir, config, result, data)
    return SimulationRun(str(config.run_id), run_dir, result, expected, _resumes(run_dir, config))


def _saved_model(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError):  # a torn or foreign file: rewritten from the checkpoint
        return None


def round_logger(run_dir: Path, user_hook: Callable[[RoundSummary], None] | None
                 ) -> Callable[[RoundSummary], None]:
    """The ``on_round`` hook that appends each round's summary to ``rounds.jsonl`` once
    (a resume re-announces the round its crash interrupted), then calls ``user_hook``."""
    log = run_dir / "rounds.jsonl"
    seen = set(_read_round_log(log))

    def on_round(summary: RoundSummary) -> None:
        if summary.round not in seen:
            # rounds.jsonl survives a crash, so metrics.json of a resumed run has every round
            with log.open("a") as fh:
                fh.write(json.dumps(asdict(summary)) + "\n")
            seen.add(summary.round)
        if user_hook is not None:
            user_hook(summary)

    return on_round


def prune_round_log(run_dir: Path, last_round: int) -> None:
    """Before a resume: keep each round up to the checkpoint's once; later rounds (logged
    before the crash lost their checkpoint) run again and are logged again."""
    log = run_dir / "rounds.jsonl"
    if not log.exists():
        return
    kept = [e for r, e in sorted(_read_round_log(log).items()) if r <= last_round]
    tmp = log.with_name(".rounds.jsonl.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
    tmp.replace(log)


def _read_round_log(log: Path) -> dict[int, dict[str, Any]]:
    """Round number -> its last logged summary (a torn last line, from a crash, is skipped)."""
    out: dict[int, dict[str, Any]] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "round" in entry:
            out[int(entry["round"])] = entry
    return out


def _execute(spec: ServerSpec, resolved: RunConfig, run_dir: Path, *, verbose: bool,
             engine: str = "ray") -> SimulationRun:
    data = bundled_data(resolved)
    outcome = ServerOutcome()
    spec.on_round = round_logger(run_dir, spec.on_round)
    server_app = make_server_app(lambda _ctx: spec, outcome)
    client_app = make_client_app(simulated_site)
    if engine == "inprocess":
        from fedsilo.simulations.inprocess import run_in_process

        try:
            run_in_process(server_app, client_app, resolved.sites)
        except Exception:
            if outcome.error is None:
                raise
    else:
        run_on_simulation_engine(server_app, client_app, resolved.sites, verbose=verbose,
                                 run_dir=run_dir)
    if outcome.error is not None:
        raise outcome.error
    if outcome.result is None:
        raise RuntimeError("the simulation engine stopped before the ServerApp finished")
    result = write_outputs(run_dir, resolved, outcome.result, data)
    return SimulationRun(str(resolved.run_id), run_dir, result, result.final_digest,
                         _resumes(run_dir, resolved))


def _resumes(run_dir: Path, config: RunConfig) -> list[int]:
    """The checkpoint round each resume of the run continued from (from its chain)."""
    db = run_dir / "lineage.sqlite"
    if not config.lineage or not db.exists():
        return []
    return [int(r["body"]["from_round"]) for r in lineage.read_chain(db) if r["type"] == "resume"]


def build_server_spec(
    config: RunConfig,
    run_dir: Path,
    *,
    on_round: Callable[[RoundSummary], None] | None = None,
    expected_sites: int | None = None,
) -> ServerSpec:
    """The server side of a simulated federation: the task's initial model (or
    ``init_model``), identity and central evaluator, and the simulated attacks.

    Used by `run_federation` and by the Flower App (``fedsilo.server.flower_app``)
    when it runs a simulated federation on Flower's deployment runtime.
    """
    if config.run_id is None:
        raise ValueError("build_server_spec needs a resolved config with run_id set")
    st = server_task(config)
    bad_sites = malicious_sites(config.sites, config.malicious, config.seed)
    federation: dict[str, Any] = {
        "task": config.task, "task_options": json.dumps(task_options(config), sort_keys=True),
        "sites": config.sites, "partition": config.partition,
        "seed": config.seed, "batch_size": config.batch_size, "sim_run_dir": str(run_dir.resolve()),
        "label_flip_sites": ",".join(bad_sites) if config.attack == "label_flip" else "",
    }
    if config.site_max_epsilon is not None:
        federation["site_max_epsilon"] = config.site_max_epsilon
    return ServerSpec(
        config=config,
        run_id=config.run_id,
        initial_weights=st.initial_weights,
        run_dir=run_dir,
        federation=federation,
        evaluate_fn=st.evaluate_fn,
        attack_fn=_attack_fn(config, bad_sites),
        root_update_fn=_root_update_fn(bundled_data(config), config),
        on_round=on_round,
        expected_sites=expected_sites,
        task_identity=st.identity,
        frozen_layers=st.frozen_layers,
        statistics=st.wants_statistics,
    )


def _attack_fn(config: RunConfig, bad_sites: list[str]) -> Callable[..., Any] | None:
    if not config.attack:
        return None
    from fedsilo.simulations.attacks import apply_attack, is_data_attack

    if is_data_attack(config.attack):
        return None
    bad = set(bad_sites)
    rng = np.random.default_rng([config.seed, 0xA77AC])

    def attack(_round: int, batch: Any) -> Any:
        mask = np.array([s in bad for s in batch.site_ids], dtype=bool)
        if not mask.any():
            return batch
        return apply_attack(config.attack, batch, mask, rng)

    return attack


def _root_update_fn(data: Dataset | None, config: RunConfig) -> Callable[..., np.ndarray] | None:
    """FLTrust's server update: one local epoch on a small root set drawn from the training split."""
    if config.aggregator.split(":")[0] != "fltrust" or data is None:
        return None
    from fedsilo.strategies.codec import ModelLayout
    from fedsilo.tasks.torch_trainer import TorchTrainer

    rng = np.random.default_rng([config.seed, 0x2007])
    idx = rng.choice(len(data.y_train), size=max(20, len(data.y_train) // 20), replace=False)
    trainer = TorchTrainer(data.x_train[idx], data.y_train[idx], data.num_classes, seed=config.seed)

    def root_update(weights: dict[str, np.ndarray], server_round: int) -> np.ndarray:
        layout = ModelLayout.from_arrays(weights)
        fit = trainer.fit(weights, {"server_round": server_round, "lr": config.lr,
                                    "local_epochs": config.local_epochs})
        return layout.flatten(fit.weights) - layout.flatten(weights)

    return root_update


def write_outputs(run_dir: Path, config: RunConfig, result: RunResult,
                  data: Dataset | None) -> RunResult:
    """Write ``metrics.json``, then ``report.html`` (last: it marks a finished run), for
    the whole run; return ``result`` with ``rounds`` covering every round once.

    ``model.npz`` is the server's (written before the closing record); it is checked
    here against the final digest. ``data``: the simulated dataset, whose partition
    draws the report's sites' data chart; None for a deployment, whose chart shows the
    sites of the handshake with the example counts they declared.
    """
    with np.load(run_dir / "model.npz", allow_pickle=False) as saved:
        if lineage.arrays_digest(dict(saved)) != result.final_digest:
            raise RuntimeError(f"{run_dir / 'model.npz'} does not match the final model digest")
    result = replace(result, rounds=whole_run_rounds(run_dir, config, result.rounds))
    metrics = {
        "run_id": config.run_id,
        "final_model_digest": result.final_digest,
        "closing_reason": result.closing_reason,
        "closing_detail": result.detail,
        "rounds_changed": result.rounds_changed,
        "resumed_from": _resumes(run_dir, config),
        # the sites' scores of the last model they evaluated (per site, mean, worst site)
        "site_evaluation": next((r.site_eval for r in reversed(result.rounds) if r.site_eval),
                                None),
        "rounds": [asdict(r) for r in result.rounds],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from fedsilo.simulations.report import write_report

    if data is not None:
        parts = partition(data.y_train, config.sites, PartitionSpec.parse(config.partition),
                          config.seed)
        label_counts = {
            site_id(i): np.bincount(data.y_train[p], minlength=data.num_classes).tolist()
            for i, p in enumerate(parts)
        }
        write_report(run_dir / "report.html", config, result, label_counts,
                     resumed_from=metrics["resumed_from"])
    else:
        declared = {s.site_id: getattr(s, "num_examples", None) for s in result.sites}
        write_report(run_dir / "report.html", config, result, declared_counts=declared,
                     resumed_from=metrics["resumed_from"])
    return result


def whole_run_rounds(run_dir: Path, config: RunConfig,
                     ran: list[RoundSummary]) -> list[RoundSummary]:
    """Every round of the run once, in order: this process's rounds, then ``rounds.jsonl``
    (rounds run before a resume), then the chain's round records for any still missing."""
    by_round: dict[int, RoundSummary] = {}
    db = run_dir / "lineage.sqlite"
    if config.lineage and db.exists():
        for env in lineage.read_chain(db):
            if env["type"] == "round":
                by_round[int(env["body"]["round"])] = _summary_of_record(env["body"])
    names = {f.name for f in fields(RoundSummary)}
    for r, entry in _read_round_log(run_dir / "rounds.jsonl").items():
        by_round[r] = RoundSummary(**{k: v for k, v in entry.items() if k in names})
    for summary in ran:
        by_round[summary.round] = summary
    return [by_round[r] for r in sorted(by_round)]


def _summary_of_record(body: dict[str, Any]) -> RoundSummary:
    from fedsilo.server import site_eval
    from fedsilo.server.outcome import body_accepted

    m = body.get("metrics") or {}
    return RoundSummary(
        round=int(body["round"]), status=body["status"], sampled=len(body["sampled"]),
        replied=len(body["replied"]),
        accepted=body_accepted(body) if body["status"] == "completed" else 0,
        rejected=dict(body["rejected"]), train_loss=m.get("train_loss"),
        test_loss=m.get("test_loss"), test_accuracy=m.get("test_accuracy"),
        wall_time=float((body.get("timings") or {}).get("total", 0.0)),
        model_digest=body["model_out"], epsilon=m.get("epsilon"), reason=body.get("reason"),
        site_eval=site_eval.summarise(body.get("evaluations") or []),
    )

"""`run_federation`: one complete simulated federation, from config to run directory.

The run directory (``<out>/<run-id>/``) is a server's (`fedsilo.server.outputs`: config,
lineage chain, checkpoint, ``rounds.jsonl``, then ``model.npz``, ``metrics.json`` and
``report.html``) plus ``sites/<site-id>/``, each simulated site's key and ledger. A
directory without ``report.html`` is not a finished run, and ``--resume`` finishes it.
``metrics.json`` and ``report.html`` are written while the engine shuts down
(`fedsilo.server.outputs.OutputsDuringShutdown`), after the final model and the closing
record.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedsilo.client.app import make_client_app
from fedsilo.server.app import make_server_app
from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.server.loop import RoundSummary, RunResult, ServerSpec
from fedsilo.server.outputs import (
    OutputsDuringShutdown,
    closed_run,
    finish_outputs,
    prune_round_log,
    resumed_from,
    round_logger,
)
from fedsilo.server.task_setup import (
    demo_partition,
    profile_releases,
    server_task,
    task_options,
)
from fedsilo.simulations.config import SimulationConfig, as_simulation
from fedsilo.simulations.engine import run_on_simulation_engine
from fedsilo.simulations.scenario import malicious_sites
from fedsilo.simulations.sites import simulated_site
from fedsilo.simulations.user_data import resolve_config as resolve_user_data
from fedsilo.tasks.datasets import DATASETS, Dataset, load_dataset
from fedsilo.tasks.partition import PartitionError, PartitionSpec, partition, site_id


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
    sites vs samples, shards), the strategy and, for a `SimulationConfig`, its attack;
    `ConfigError` on failure, before anything is written. ``fedsilo server run`` checks a
    deployment's `RunConfig` with it too."""
    config = resolve_user_data(config)  # a user's files: readable, sites found
    st = server_task(config)
    data = bundled_data(config)
    if data is not None:
        try:
            partition(data.y_train, config.sites, PartitionSpec.parse(demo_partition(config)),
                      config.seed)
        except PartitionError as exc:
            flag = "--sites" if "exceeds" in str(exc) else "--partition"
            raise ConfigError(f"{flag}: {exc}") from None
    elif config.aggregator.split(":")[0] == "fltrust":
        raise ConfigError(f"--aggregator: fltrust needs a server root set, which only the "
                          f"bundled tasks provide ({', '.join(DATASETS)}); --task is {config.task}")
    _strategy_check(config, profile_releases(config, st.wants_profile))


def bundled_data(config: RunConfig) -> Dataset | None:
    """The bundled dataset of the run's task (None for any other task)."""
    if config.task not in DATASETS:
        return None
    return load_dataset(config.task, seed=int(task_options(config)["seed"]))


def _strategy_check(config: RunConfig, releases: tuple[float, ...]) -> None:
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
                          population=config.sites, expected_clients=q * config.sites, seed=0,
                          releases=releases)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise ConfigError(f"--dp-{field.replace('_', '-')}: {message}") from None
    if config.secagg.enabled:
        agg = registry.make_aggregator(config.aggregator)
        if not agg.sum_only:
            raise ConfigError(
                f"--aggregator: {agg.name} needs each site's individual update, which secure "
                "aggregation hides from the server (it learns only the sum); use mean with --secagg"
            )
    if isinstance(config, SimulationConfig) and config.attack:
        _attack_check(config)


def _attack_check(config: SimulationConfig) -> None:
    from fedsilo.simulations.attacks import ATTACKS, DATA_SHIFTS, is_data_attack

    if config.attack not in ATTACKS:
        raise ConfigError(
            f"--attack: unknown attack {config.attack!r}; accepted: {', '.join(sorted(ATTACKS))}"
        )
    if config.secagg.enabled and not is_data_attack(config.attack):
        raise ConfigError("--attack: model-poisoning attacks need individual updates; "
                          "with --secagg only data attacks (label_flip, covariate_shift, "
                          "label_shift) can be simulated")
    if config.attack in DATA_SHIFTS and config.task not in DATASETS:
        raise ConfigError(f"--attack: {config.attack} shifts a bundled task's data; task "
                          f"{config.task!r} is not one (bundled: {', '.join(DATASETS)})")
    found = config.overreach()
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
    config : the validated run config (a server `RunConfig` runs as a `SimulationConfig`
        without attackers).
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
    config = resolve_user_data(as_simulation(config))  # absolute data path; sites named by the data
    check_feasible(config)
    run_id = config.run_id or new_run_id()
    run_dir = Path(config.out) / run_id
    if (run_dir / "lineage.sqlite").exists() or (run_dir / "model.npz").exists():
        raise ConfigError(f"--run-id: run directory {run_dir} already holds a run")
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = SimulationConfig.from_dict({**config.to_dict(), "run_id": run_id})
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
    config = resumable_config(run_dir, SimulationConfig)
    if closed_run(run_dir, config) is not None:
        result = finish_outputs(run_dir, config, build_server_spec(config, run_dir),
                                site_label_counts(bundled_data(config), config))
        return SimulationRun(str(config.run_id), run_dir, result, result.final_digest,
                             resumed_from(run_dir, config))
    prune_round_log(run_dir, read_checkpoint(run_dir).round)
    spec = build_server_spec(config, run_dir, on_round=on_round)
    spec.resume = True
    return _execute(spec, config, run_dir, verbose=verbose, engine=engine)


def _execute(spec: ServerSpec, resolved: RunConfig, run_dir: Path, *, verbose: bool,
             engine: str = "ray") -> SimulationRun:
    data = bundled_data(resolved)
    outcome = OutputsDuringShutdown(run_dir, resolved, lambda: site_label_counts(data, resolved))
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
    result = outcome.wait()  # written while the engine shut down
    return SimulationRun(str(resolved.run_id), run_dir, result, result.final_digest,
                         resumed_from(run_dir, resolved))


def exit_now(code: int) -> int:
    """End a ``fedsilo simulate`` process at once with ``code``, skipping the interpreter's
    teardown (returns ``code``, to exit the usual way, on a Python without that hook).

    The command line calls it when the run is over: its summary printed, the model, the
    closed chain, ``metrics.json`` and ``report.html`` on disk, Ray shut down. Python's
    finalisation then only frees every module's objects, torch, Ray, Flower and matplotlib
    among them, with full garbage collections: 6-10 s measured on a loaded machine, with
    nothing left to write. What comes before that in an exit still runs, in its order:
    non-daemon threads are joined (thread pools shut down first) and the exit handlers
    (``atexit``: logging, Ray's, temporary files) are called.
    """
    import atexit
    import os

    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first
    if shutdown is None:
        return code
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def site_label_counts(data: Dataset | None, config: RunConfig) -> dict[str, list[int]] | None:
    """Examples per label at each simulated site of a bundled task (the report's sites'
    data chart); None for any other task."""
    if data is None:
        return None
    parts = partition(data.y_train, config.sites, PartitionSpec.parse(config.partition),
                      config.seed)
    return {site_id(i): np.bincount(data.y_train[p], minlength=data.num_classes).tolist()
            for i, p in enumerate(parts)}


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
    config = as_simulation(config)
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
    if config.attack in ("covariate_shift", "label_shift"):
        federation.update(data_shift=config.attack, data_shift_sites=",".join(bad_sites))
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
        statistics=st.wants_statistics, profile=st.wants_profile, baseline=st.baseline,
    )


def _attack_fn(config: SimulationConfig, bad_sites: list[str]) -> Callable[..., Any] | None:
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
    from fedsilo.common.codec import ModelLayout
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

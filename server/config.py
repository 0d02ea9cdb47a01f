"""The run configuration: defaults < TOML file < command-line flags, validated once.

`RunConfig` is the one resolved, validated config of a run: what a server needs (the
task, rounds, sampling, local training settings sent to the sites, aggregation, privacy,
outputs). It is written to the run directory as ``config.toml`` and recorded in the
lineage genesis record. Validation happens here, at the boundary; everything downstream
trusts it. Options that only a simulation can honour (simulated attackers, the simulated
sites' own privacy ceilings: `SIMULATION_ONLY`) are not fields of it:
`fedsilo.simulations.config.SimulationConfig` extends it with them, and a deployment's
config that sets one is refused with one line naming it. A bundled task's demo split
over its sites (``partition``) is a task option (``[task_options] partition``), not a
field: a deployment's config setting it at top level is refused (`MOVED`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fedsilo.common import tomlfile
from fedsilo.server.config_fields import (
    ConfigError,
    DPSettings,
    RecordDPSettings,
    SecAggSettings,
    build_table,
    coerce,
    drop_none,
    positive_int,
)

__all__ = ["MOVED", "SIMULATION_ONLY", "ConfigError", "DPSettings", "RecordDPSettings", "RunConfig",
           "SecAggSettings", "check_run_id", "overreach", "read_toml"]


# Run options that only a simulation can honour (simulated attacks, the simulated sites'
# own privacy ceilings, the split of the data over simulated sites), with their defaults:
# fields of `SimulationConfig` only; a deployment's config that sets one to anything but
# its default is refused (``partition`` always, by `MOVED`: a bundled task's demo split
# is its ``[task_options] partition``).
CARD_KEYS = ("intended_use", "out_of_scope", "owner")
"""What ``[card]`` may state (`fedsilo.governance.card`)."""
SIMULATION_ONLY: dict[str, Any] = {"attack": None, "malicious": 0, "allow_overreach": False,
                                   "site_max_epsilon": None, "partition": "dirichlet:0.5"}

# Former run options that are now another part's options: a deployment's config that sets
# one at top level is refused with one line saying where it goes now.
MOVED: dict[str, str] = {
    "partition": ("--config: partition = {value!r} is not a deployment option: a bundled "
                  "task's demo split goes under [task_options] as partition = {value!r} "
                  "(fedsilo simulate --partition sets it)"),
}


@dataclass
class RunConfig:
    """Everything that determines a run on a server (simulated or deployed).

    Parameters
    ----------
    task : what is learned: a built-in task (digits, breast_cancer, wine, mnist1d,
        tabular) or ``module:object`` (see `fedsilo.tasks.resolve_task`); ``dataset`` is
        accepted as its old name.
    task_options : the task's own options (the ``[task_options]`` table).
    init_model : a file holding the initial model instead of the task's (``.npz`` of named
        arrays, or a torch ``state_dict`` saved as ``.pt``); its layers must match the task's.
    sites : number of sites (simulated, or the nodes a deployment waits for and samples from).
    rounds : number of federated rounds.
    fraction : fraction of sites sampled per round, in (0, 1].
    local_epochs : local epochs per round at each site.
    lr : local SGD learning rate.
    batch_size : local mini-batch size.
    hidden : hidden units of the MLP.
    seed : seed of demo partitions, model initialisation, sampling and local shuffling.
    aggregator, optimizer : strategy specs, ``name:param=value,...``.
    proximal_mu : FedProx proximal term at the sites (0 = off).
    min_sites : replies needed for a round to change the model.
    eval_every : every this many rounds (and the last round) each sampled site scores the
        round's global model on its own held-out split, signed, in lineage; 0: never.
    min_rounds_changed : rounds that must change the model (with at least one site's
        update) for the run to end ``completed``; with fewer it ends ``no_progress`` (the
        CLI exits 3). Default 1: a run in which no round changed the model did not succeed.
    round_timeout : seconds to wait for replies in a round.
    max_update_norm : screening bound on a site's update norm (absurd-norm rejection).
    lineage : write the signed lineage chain (on by default).
    monitor : the run's monitor (``[monitor]``: thresholds, per-code severities and the
        policy on error flags, `fedsilo.governance.flags.MonitorConfig`); on by default.
    card : what the model card states that a run cannot know (``[card]``:
        ``intended_use``, ``out_of_scope``, ``owner``).
    out : parent directory of run directories.
    run_id : run directory name and lineage run id (default: generated).
    """

    task: str = "digits"
    task_options: dict[str, Any] = field(default_factory=dict)
    init_model: str | None = None
    sites: int = 10
    rounds: int = 20
    fraction: float = 1.0
    local_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 32
    hidden: int = 64
    seed: int = 0
    aggregator: str = "mean"
    optimizer: str = "fedavg"
    proximal_mu: float = 0.0
    min_sites: int = 1
    min_rounds_changed: int = 1
    eval_every: int = 1
    round_timeout: float = 600.0
    max_update_norm: float = 1e4
    lineage: bool = True
    out: str = "runs"
    run_id: str | None = None
    dp: DPSettings = field(default_factory=DPSettings)
    record_dp: RecordDPSettings = field(default_factory=RecordDPSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    monitor: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    # options this config refuses as simulation-only (`SimulationConfig` accepts them)
    refused: ClassVar[Mapping[str, Any]] = SIMULATION_ONLY

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """Defaults, then the TOML file at ``path``, then ``overrides`` (CLI flags); validated."""
        data: dict[str, Any] = {}
        if path is not None:
            data = read_toml(Path(path))
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            if "." in key:
                table, sub = key.split(".", 1)
                data.setdefault(table, {})
                if not isinstance(data[table], dict):
                    raise ConfigError(f"config: {table} must be a table")
                data[table][sub] = value
            else:
                if key in ("task", "dataset"):  # a flag overrides the file's task, by either name
                    data.pop("task", None)
                    data.pop("dataset", None)
                data[key] = value
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a (TOML-shaped) mapping; unknown keys and wrong types are errors."""
        top = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        if "dataset" in data and "task" not in data:  # the old name: its own flag and wording
            _check_task(data["dataset"], "--dataset", "dataset")
        data = _task_alias(data)
        for key, value in data.items():
            name = key.replace("-", "_")
            if name in MOVED and name not in top:
                raise ConfigError(MOVED[name].format(value=value))
            if name in cls.refused and name not in top:
                if value == cls.refused[name]:
                    continue  # a default (as a simulation's config.toml holds): nothing asked
                raise ConfigError(f"--config: {name} = {value!r} is a simulation option (fedsilo "
                                  "simulate); a deployment's run config must not set it")
            if name not in top:
                raise ConfigError(
                    f"config: unknown option {key!r}; accepted: {', '.join(sorted(top))}"
                )
            if name in ("dp", "secagg", "record_dp"):
                sub_cls = {"dp": DPSettings, "secagg": SecAggSettings, "record_dp": RecordDPSettings}[name]
                if not isinstance(value, Mapping):
                    raise ConfigError(f"config: [{name}] must be a table")
                kwargs[name] = build_table(sub_cls, value, prefix=f"{name}.")
            else:
                kwargs[name] = coerce(f"{name}", top[name].type, value)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML-able: None values dropped)."""
        return drop_none(dataclasses.asdict(self))

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid option and what is accepted."""
        _check_task(self.task)
        self._validate_counts()
        self._validate_numbers()
        if self.run_id is not None:
            check_run_id(self.run_id)
        if self.min_sites > self.sites:
            raise ConfigError(f"--min-sites: {self.min_sites} exceeds --sites {self.sites}")
        self.check_rounds_possible()
        if self.dp.enabled:
            self._validate_dp()
        if self.record_dp.enabled:
            self._validate_record_dp()
        self.monitor_config()
        for key, value in self.card.items():
            if key not in CARD_KEYS or not isinstance(value, str):
                raise ConfigError(f"card.{key}: expected one of {', '.join(CARD_KEYS)}, as text")

    def _validate_counts(self) -> None:
        for flag, value in (("--sites", self.sites), ("--rounds", self.rounds),
                            ("--local-epochs", self.local_epochs), ("--batch-size", self.batch_size),
                            ("--hidden", self.hidden), ("--min-sites", self.min_sites),
                            ("--min-rounds-changed", self.min_rounds_changed)):
            positive_int(flag, value)
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every: must be an integer >= 0 (0: no per-site "
                              f"evaluation), got {self.eval_every}")
        if self.min_rounds_changed > self.rounds:
            raise ConfigError(f"--min-rounds-changed: {self.min_rounds_changed} exceeds "
                              f"--rounds {self.rounds}")
        if self.seed < 0:
            raise ConfigError(f"--seed: must be >= 0, got {self.seed}")

    def _validate_numbers(self) -> None:
        if not (0.0 < self.fraction <= 1.0) or math.isnan(self.fraction):
            raise ConfigError(f"--fraction: {self.fraction} is outside (0, 1]")
        for name, value in (("--lr", self.lr), ("--round-timeout", self.round_timeout),
                            ("--max-update-norm", self.max_update_norm)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: must be a positive number, got {value}")
        if self.proximal_mu < 0 or not math.isfinite(self.proximal_mu):
            raise ConfigError(f"--proximal-mu: must be >= 0, got {self.proximal_mu}")

    def _validate_record_dp(self) -> None:
        rd = self.record_dp
        if rd.epsilon is None and rd.noise_multiplier is None:
            raise ConfigError("--record-dp-epsilon: set a per-site epsilon or --record-dp-noise-multiplier")
        for flag, value in (("--record-dp-epsilon", rd.epsilon),
                            ("--record-dp-noise-multiplier", rd.noise_multiplier),
                            ("--record-dp-max-grad-norm", rd.max_grad_norm),
                            ("--record-dp-profile-noise-multiplier", rd.profile_noise_multiplier)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{flag}: must be a positive number, got {value}")
        if not 0 < rd.delta < 1:
            raise ConfigError(f"--record-dp-delta: must be in (0, 1), got {rd.delta}")

    def check_rounds_possible(self) -> None:
        """`ConfigError` when no round could ever finish or change the model: a run that
        would wait forever in round 1 (a SecAgg+ threshold above the sampled sites) or
        skip every round (more replies needed than sites sampled) is refused up front."""
        poisson_dp = self.dp.enabled and self.dp.sampling == "poisson" and self.fraction < 1.0
        # Poisson sampling draws a varying number of sites, up to all of them
        n = self.sites if poisson_dp else self.sites_per_round
        sampled = (f"{n} site{'s' if n != 1 else ''} sampled per round "
                   f"(--fraction {self.fraction} of --sites {self.sites})")
        min_sites_used = self.secagg.enabled or not self.dp.enabled
        if min_sites_used and self.min_sites > n:
            raise ConfigError(f"--min-sites: {self.min_sites} replies needed but only {sampled}; "
                              "no round could change the model")
        if self.secagg.enabled:
            from fedsilo.privacy.secagg.config import SecAggConfig

            sa = self.secagg
            if n < 2:
                raise ConfigError(f"--secagg: secure aggregation needs at least 2 sites per "
                                  f"round; {sampled}")
            try:
                sac = SecAggConfig(degree=sa.degree, threshold=sa.threshold,
                                   clip_range=sa.clip_range, max_weight=sa.max_weight).validate()
                holders = dataclasses.replace(sac, threshold=None).resolve(n)[0] + 1
                if sa.threshold is not None and sa.threshold > holders:
                    raise ConfigError(
                        f"--secagg-threshold: {sa.threshold} exceeds the {holders} holders of each "
                        f"site's secret with {sampled}; round 1 could never finish")
                sac.resolve(n)
            except ValueError as exc:
                if isinstance(exc, ConfigError):
                    raise
                field, _, message = str(exc).partition(": ")
                flag = "--" + field.replace(".", "-").replace("_", "-")
                raise ConfigError(f"{flag}: {message} with {sampled}") from None

    def dp_config(self, *, simulation: bool = True) -> Any:
        """The `fedsilo.privacy.dp.DPConfig` of this run (requires ``dp.enabled``)."""
        from fedsilo.privacy.dp import DPConfig

        d = self.dp
        return DPConfig(
            epsilon=d.epsilon, delta=d.delta, noise_multiplier=d.noise_multiplier,
            clip_norm=d.clip_norm, clipping=d.clipping, target_quantile=d.target_quantile,
            where=d.where, sampling=d.sampling, method=d.accountant,
            secure_noise=(not simulation) if d.secure_noise is None else d.secure_noise,
            weighting=d.weighting, weight_cap=d.weight_cap,
            profile_noise_multiplier=d.profile_noise_multiplier,
        )

    def _validate_dp(self) -> None:
        from fedsilo.privacy.dp import check_composition, check_secure_aggregation

        try:
            dpc = self.dp_config().validate()
            check_composition(self.aggregator.split(":")[0])
            if self.secagg.enabled:
                check_secure_aggregation(dpc)
                if dpc.clipping == "adaptive":
                    raise ValueError("clipping: adaptive clipping needs the clipped count summed "
                                     "securely, which fedsilo's SecAgg rounds do not carry yet; "
                                     "use fixed clipping with --secagg")
        except ValueError as exc:
            field, _, message = str(exc).partition(":")
            field = field.strip().replace("_", "-")
            flag = "--aggregator" if field == "aggregator" else f"--dp-{field}"
            raise ConfigError(f"{flag}: {message.strip()}") from None

    def monitor_config(self) -> Any:
        """The validated `fedsilo.governance.flags.MonitorConfig` of ``[monitor]``."""
        from fedsilo.governance.flags import MonitorConfig, MonitorConfigError

        try:
            return MonitorConfig.from_dict(self.monitor)
        except MonitorConfigError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def dataset(self) -> str:
        """The task's old name (``--dataset``): the task spec."""
        return self.task

    def overreach(self) -> tuple[str, bool] | None:
        """Attackers beyond the aggregator's tolerance: none in a server's own config."""
        return None

    @property
    def sites_per_round(self) -> int:
        """How many sites are sampled each round."""
        return max(1, round(self.fraction * self.sites))


# ---------------------------------------------------------------- helpers
def read_toml(path: Path) -> dict[str, Any]:
    """Read a run config file; one-line `ConfigError` when unreadable or invalid."""
    return tomlfile.read_toml(path, ConfigError, "--config")


def overreach(config: RunConfig) -> tuple[str, bool] | None:
    """More simulated attackers than the aggregator tolerates: (what, refusable), else None.

    A deployment's config has no simulated attackers (None); a simulation's
    (`fedsilo.simulations.config.SimulationConfig.overreach`) says what and whether the
    run may be refused.
    """
    return config.overreach()


# A run id names the run directory and goes into lineage, logs and shell commands: a safe,
# portable file name (no separators, newlines, shell metacharacters or leading dot).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RUN_ID_ACCEPTED = "1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


def check_run_id(run_id: str) -> None:
    """`ConfigError` (one line, naming --run-id and what is accepted) unless ``run_id``
    matches `RUN_ID_PATTERN`."""
    if RUN_ID_PATTERN.fullmatch(run_id) is None:
        shown = repr(run_id) if len(run_id) <= 40 else f"{run_id[:40]!r}... ({len(run_id)} characters)"
        raise ConfigError(f"--run-id: {shown} is not accepted; expected {RUN_ID_ACCEPTED}")


def _task_alias(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``dataset`` (the old name) -> ``task``; both, naming different tasks, is an error."""
    if "dataset" not in data:
        return data
    out = dict(data)
    alias = out.pop("dataset")
    if "task" in out and out["task"] != alias:
        raise ConfigError(f"--dataset: {alias!r} conflicts with --task {out['task']!r}; "
                          "--dataset is the old name of --task, give one")
    out["task"] = alias
    return out


def _check_task(task: Any, flag: str = "--task", noun: str = "task") -> None:
    """The task spec's form (a built-in name or ``module:object``); importing and building
    it is `fedsilo.tasks.resolve_task`'s job, when the run starts."""
    from fedsilo.tasks.registry import BUILTINS

    if not isinstance(task, str):
        raise ConfigError(f"{flag}: expected a string, got {task!r}")
    if task in BUILTINS:
        return
    module, _, obj = task.partition(":")
    if not module or not obj or ":" in obj:
        raise ConfigError(f"{flag}: unknown {noun} {task!r}; accepted: {', '.join(BUILTINS)}, "
                          "or your own task as 'module:object'")

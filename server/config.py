"""The run configuration: defaults < TOML file < command-line flags, validated once.

`RunConfig` is the one resolved, validated config of a run. It is written to the run
directory as ``config.toml`` and recorded in the lineage genesis record. Validation
happens here, at the boundary; everything downstream trusts it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsilo.common import tomlfile

DATASETS = ("digits", "breast_cancer", "wine", "mnist1d")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range (one line, names the option)."""


@dataclass
class DPSettings:
    """Client-level differential privacy (``[dp]`` table; off unless ``enabled``).

    Fields as in `fedsilo.privacy.dp.DPConfig` (``accountant`` is its ``method``);
    ``secure_noise`` None means: seeded noise in ``fedsilo simulate`` (reproducible),
    a cryptographically secure generator in deployments.
    """

    enabled: bool = False
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    clipping: str = "fixed"
    target_quantile: float = 0.5
    where: str = "server"
    sampling: str = "poisson"
    accountant: str = "rdp"
    secure_noise: bool | None = None
    weighting: str = "uniform"
    weight_cap: float | None = None


@dataclass
class RecordDPSettings:
    """Record-level DP-SGD at each site through Opacus (``[record_dp]`` table).

    epsilon : each site's own target epsilon over the whole run (noise calibrated to it
    when ``noise_multiplier`` is not given); delta : record-level delta; max_grad_norm :
    per-sample gradient clipping norm.
    """

    enabled: bool = False
    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0


@dataclass
class SecAggSettings:
    """Secure aggregation (``[secagg]`` table; off unless ``enabled``).

    degree : SecAgg+ graph degree (None: 2*ceil(log2 n)); threshold : shares needed to
    reconstruct a secret (None: a strict majority of each site's neighbours);
    clip_range : each coordinate of ``weight / max_weight * update`` is clipped to
    ``[-clip_range, clip_range]`` before quantisation; max_weight : the largest example
    count a site may weigh its update with.
    """

    enabled: bool = False
    degree: int | None = None
    threshold: int | None = None
    clip_range: float = 1.0
    max_weight: float = 1000.0


@dataclass
class RunConfig:
    """Everything that determines a run.

    Parameters
    ----------
    task : what is learned: a built-in task (digits, breast_cancer, wine, mnist1d,
        tabular) or ``module:object`` (see `fedsilo.tasks.resolve_task`); ``dataset`` is
        accepted as its old name.
    task_options : the task's own options (the ``[task_options]`` table).
    init_model : a file holding the initial model instead of the task's (``.npz`` of named
        arrays, or a torch ``state_dict`` saved as ``.pt``); its layers must match the task's.
    sites : number of simulated sites.
    rounds : number of federated rounds.
    partition : iid, dirichlet:ALPHA or shards:K.
    fraction : fraction of sites sampled per round, in (0, 1].
    local_epochs : local epochs per round at each site.
    lr : local SGD learning rate.
    batch_size : local mini-batch size.
    hidden : hidden units of the MLP.
    seed : seed of partitions, model initialisation, sampling and local shuffling.
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
    attack, malicious : simulated attack name and number of malicious sites.
    allow_overreach : simulation: run even when more sites attack than the aggregator
        tolerates (its ``f``, trimming fraction or breakdown point); the genesis record
        then says the run is outside the aggregator's guarantee. Off: such a run is refused.
    site_max_epsilon : simulation: every site's own privacy ceiling (its policy refuses
        DP rounds that would take it past this epsilon).
    lineage : write the signed lineage chain (on by default).
    out : parent directory of run directories.
    run_id : run directory name and lineage run id (default: generated).
    """

    task: str = "digits"
    task_options: dict[str, Any] = field(default_factory=dict)
    init_model: str | None = None
    sites: int = 10
    rounds: int = 20
    partition: str = "dirichlet:0.5"
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
    attack: str | None = None
    malicious: int = 0
    allow_overreach: bool = False
    site_max_epsilon: float | None = None
    lineage: bool = True
    out: str = "runs"
    run_id: str | None = None
    dp: DPSettings = field(default_factory=DPSettings)
    record_dp: RecordDPSettings = field(default_factory=RecordDPSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)

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
            if name not in top:
                raise ConfigError(
                    f"config: unknown option {key!r}; accepted: {', '.join(sorted(top))}"
                )
            if name in ("dp", "secagg", "record_dp"):
                sub_cls = {"dp": DPSettings, "secagg": SecAggSettings, "record_dp": RecordDPSettings}[name]
                if not isinstance(value, Mapping):
                    raise ConfigError(f"config: [{name}] must be a table")
                kwargs[name] = _build(sub_cls, value, prefix=f"{name}.")
            else:
                kwargs[name] = _coerce(f"{name}", top[name].type, value)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML-able: None values dropped)."""
        return _drop_none(dataclasses.asdict(self))

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid option and what is accepted."""
        from fedsilo.simulations.partition import PartitionError, PartitionSpec

        _check_task(self.task)
        _positive_int("--sites", self.sites)
        _positive_int("--rounds", self.rounds)
        _positive_int("--local-epochs", self.local_epochs)
        _positive_int("--batch-size", self.batch_size)
        _positive_int("--hidden", self.hidden)
        _positive_int("--min-sites", self.min_sites)
        _positive_int("--min-rounds-changed", self.min_rounds_changed)
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every: must be an integer >= 0 (0: no per-site "
                              f"evaluation), got {self.eval_every}")
        if self.min_rounds_changed > self.rounds:
            raise ConfigError(f"--min-rounds-changed: {self.min_rounds_changed} exceeds "
                              f"--rounds {self.rounds}")
        if not (0.0 < self.fraction <= 1.0) or math.isnan(self.fraction):
            raise ConfigError(f"--fraction: {self.fraction} is outside (0, 1]")
        for name, value in (("--lr", self.lr), ("--round-timeout", self.round_timeout),
                            ("--max-update-norm", self.max_update_norm)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: must be a positive number, got {value}")
        if self.proximal_mu < 0 or not math.isfinite(self.proximal_mu):
            raise ConfigError(f"--proximal-mu: must be >= 0, got {self.proximal_mu}")
        if self.seed < 0:
            raise ConfigError(f"--seed: must be >= 0, got {self.seed}")
        try:
            PartitionSpec.parse(self.partition)
        except PartitionError as exc:
            raise ConfigError(f"--partition: {exc}") from None
        if self.malicious < 0 or self.malicious >= self.sites:
            raise ConfigError(f"--malicious: must be in [0, sites), got {self.malicious}")
        if self.malicious and not self.attack:
            raise ConfigError("--malicious: needs --attack NAME")
        if self.attack and self.malicious == 0:
            raise ConfigError("--attack: needs --malicious F with F >= 1")
        if self.run_id is not None:
            check_run_id(self.run_id)
        if self.min_sites > self.sites:
            raise ConfigError(f"--min-sites: {self.min_sites} exceeds --sites {self.sites}")
        self.check_rounds_possible()
        if self.dp.enabled:
            self._validate_dp()
        rd = self.record_dp
        if rd.enabled:
            if rd.epsilon is None and rd.noise_multiplier is None:
                raise ConfigError("--record-dp-epsilon: set a per-site epsilon or --record-dp-noise-multiplier")
            for flag, value in (("--record-dp-epsilon", rd.epsilon),
                                ("--record-dp-noise-multiplier", rd.noise_multiplier),
                                ("--record-dp-max-grad-norm", rd.max_grad_norm)):
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

    @property
    def dataset(self) -> str:
        """The task's old name (``--dataset``): the task spec."""
        return self.task

    @property
    def sites_per_round(self) -> int:
        """How many sites are sampled each round."""
        return max(1, round(self.fraction * self.sites))


# ---------------------------------------------------------------- helpers
def read_toml(path: Path) -> dict[str, Any]:
    """Read a run config file; one-line `ConfigError` when unreadable or invalid."""
    return tomlfile.read_toml(path, ConfigError, "--config")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(
                f"config: unknown option {prefix}{key!r}; accepted: {', '.join(sorted(fields))}"
            )
        kwargs[name] = _coerce(prefix + name, fields[name].type, value)
    return cls(**kwargs)


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    text = str(annotation)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config: {name} must not be empty")
    flag = "--" + name.replace("_", "-")
    if text.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{flag}: expected true or false, got {value!r}")
    if text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise ConfigError(f"{flag}: expected an integer, got {value!r}")
        return value
    if text.startswith("float"):
        if isinstance(value, bool):
            raise ConfigError(f"{flag}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag}: expected a number, got {value!r}") from None
        if math.isnan(out):
            raise ConfigError(f"{flag}: expected a number, got NaN")
        return out
    if text.startswith("dict"):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: [{name}] must be a table, got {value!r}")
        return dict(value)
    if text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{flag}: expected a string, got {value!r}")
        return value
    return value


def overreach(config: RunConfig) -> tuple[str, bool] | None:
    """More simulated attackers than the aggregator tolerates: (what, refusable), else None.

    The worst case is counted: every attacking site sampled in the same round. ``refusable``
    is True when the aggregator states a tolerance (its ``f``, trimming fraction or breakdown
    point); a rule that states none (plain mean...) is run as asked, but the run still
    records that it is outside any guarantee.
    """
    if not config.attack or config.malicious <= 0:
        return None
    from fedsilo.strategies import registry

    try:
        agg = registry.make_aggregator(config.aggregator)
    except ValueError:  # reported, with its flag, by the aggregator check
        return None
    n = config.sites_per_round
    attackers = min(config.malicious, n)
    if attackers <= agg.tolerance(n):
        return None
    what = (f"{attackers} attacking sites of {n} sampled exceed what --aggregator {config.aggregator} "
            f"tolerates ({agg.tolerance(n)}: {agg.tolerance_text(n)})")
    return what, agg.states_tolerance


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


def _positive_int(flag: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{flag}: must be a positive integer, got {value}")


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj

"""The config of a simulated run: the server's `RunConfig` plus what only a simulation has.

`SimulationConfig` is what ``fedsilo simulate`` and ``fedsilo evaluate`` resolve (flags
over ``--config`` over defaults) and what `fedsilo.simulations.runner.run_federation`
runs. It extends `fedsilo.server.config.RunConfig` (the server reads its fields by the
same names) with the fields a deployment refuses (`fedsilo.server.config.SIMULATION_ONLY`):

* ``attack``, ``malicious``: a simulated attack (`fedsilo.simulations.attacks`) and how
  many simulated sites run it (drawn with the run's seed);
* ``allow_overreach``: run even when more sites attack than the aggregator tolerates (its
  ``f``, trimming fraction or breakdown point); the genesis record then says the run is
  outside the aggregator's guarantee. Off: such a run is refused;
* ``site_max_epsilon``: every simulated site's own privacy ceiling (its policy refuses DP
  rounds that would take it past this epsilon);
* ``partition``: how the data is split over the simulated sites (``--partition``). For a
  bundled task it maps onto the task's own option (``[task_options] partition``, which a
  deployment's demo ``partition-id`` nodes read too): a top-level value (the flag, or an
  older config file) sets that option, and the field holds the effective split. For a
  user's file (`fedsilo.simulations.user_data`) it stays a simulation field: the split
  of the file (iid, dirichlet:ALPHA, shards:K or column:NAME).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.tasks.bundled import DEFAULT_PARTITION
from fedsilo.tasks.datasets import DATASETS
from fedsilo.tasks.partition import PartitionError, PartitionSpec


@dataclass
class SimulationConfig(RunConfig):
    """A `RunConfig` with the simulation-only fields (see the module docstring)."""

    attack: str | None = None
    malicious: int = 0
    allow_overreach: bool = False
    site_max_epsilon: float | None = None
    partition: str = DEFAULT_PARTITION

    refused: ClassVar[Mapping[str, Any]] = {}  # a simulation accepts every option

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """`RunConfig.from_dict`, with a bundled task's ``partition`` mapped onto its
        ``[task_options] partition`` (see the module docstring)."""
        return super().from_dict(_bundled_partition(data))

    def to_dict(self) -> dict[str, Any]:
        """`RunConfig.to_dict`; a bundled task's split only in its ``task_options`` (where
        it maps to), so the file reloads to the same config and task options."""
        out = super().to_dict()
        if self.task in DATASETS:
            out.pop("partition", None)
        return out

    def validate(self) -> None:
        """The server's checks, then the split's and the simulated attackers'
        (`ConfigError`, one line)."""
        super().validate()
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

    def overreach(self) -> tuple[str, bool] | None:
        """More simulated attackers than the aggregator tolerates: (what, refusable), else None.

        The worst case is counted: every attacking site sampled in the same round.
        ``refusable`` is True when the aggregator states a tolerance (its ``f``, trimming
        fraction or breakdown point); a rule that states none (plain mean...) is run as
        asked, but the run still records that it is outside any guarantee.
        """
        if not self.attack or self.malicious <= 0:
            return None
        from fedsilo.strategies import registry

        try:
            agg = registry.make_aggregator(self.aggregator)
        except ValueError:  # reported, with its flag, by the aggregator check
            return None
        n = self.sites_per_round
        attackers = min(self.malicious, n)
        if attackers <= agg.tolerance(n):
            return None
        what = (f"{attackers} attacking sites of {n} sampled exceed what --aggregator "
                f"{self.aggregator} tolerates ({agg.tolerance(n)}: {agg.tolerance_text(n)})")
        return what, agg.states_tolerance


def _bundled_partition(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` with a bundled task's split in ``task_options.partition`` (a top-level
    ``partition``, the flag's, wins over the table's) and ``partition`` the effective split;
    other tasks' data as given. The default split is left out of ``task_options``, so a
    default run's task options (and task identity) are as before the option existed."""
    task = data.get("task", data.get("dataset", "digits"))
    options = data.get("task_options", {})
    if task not in DATASETS or not isinstance(options, Mapping):  # (a bad table: coercion says)
        return data
    out = dict(data)
    if out.get("partition") is not None:
        options = out["task_options"] = {**options, "partition": out["partition"]}
    out["partition"] = options.get("partition", DEFAULT_PARTITION)
    return out


def as_simulation(config: RunConfig) -> SimulationConfig:
    """``config`` as a `SimulationConfig` (a server `RunConfig`: no attackers, no ceilings)."""
    if isinstance(config, SimulationConfig):
        return config
    return SimulationConfig.from_dict(config.to_dict())  # type: ignore[return-value]

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
  rounds that would take it past this epsilon).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedsilo.server.config import ConfigError, RunConfig


@dataclass
class SimulationConfig(RunConfig):
    """A `RunConfig` with the simulation-only fields (see the module docstring)."""

    attack: str | None = None
    malicious: int = 0
    allow_overreach: bool = False
    site_max_epsilon: float | None = None

    refused: ClassVar[Mapping[str, Any]] = {}  # a simulation accepts every option

    def validate(self) -> None:
        """The server's checks, then the simulated attackers' (`ConfigError`, one line)."""
        super().validate()
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


def as_simulation(config: RunConfig) -> SimulationConfig:
    """``config`` as a `SimulationConfig` (a server `RunConfig`: no attackers, no ceilings)."""
    if isinstance(config, SimulationConfig):
        return config
    return SimulationConfig.from_dict(config.to_dict())  # type: ignore[return-value]

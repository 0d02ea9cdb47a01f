"""A site's own epsilon ceiling for client-level DP, enforced at the site.

The server sends its DP parameters with every round
(:meth:`fedsilo.privacy.dp.ClientLevelDP.round_config`). The site recomputes its own
cumulative epsilon with the same accountant (:class:`ClientLevelAccountant`) and
refuses a round that would take it past its ceiling. It takes the smaller of two
valid upper bounds on its own privacy loss:

* the server's amplified bound: ``accountant_rounds`` sampled-Gaussian rounds with the
  announced sampling rate (every round counts, whether the site was sampled or not;
  this is what sampling amplification assumes);
* its own unamplified bound: its participations (including this one) as plain
  Gaussian rounds with the same noise multiplier. Rounds it did not take part in do
  not depend on its data, so this bound needs nothing from the server but ``z``; it
  holds even for an observer who knows which rounds the site was in (it is conditional
  on the participation pattern, which sampling makes independent of the data).

Both are valid upper bounds, so the smaller one is too. The amplified one trusts the
server to sample as announced (the central-DP server is trusted to add the noise
anyway); the unamplified one does not.

Both bounds also compose the run's one-off releases the server announces (``releases``:
the drift check's noisy sum of the sites' data profiles, made before round 1; counted
whether or not this site's profile was in it, which only over-counts).

The site pins the accounting parameters it first sees (noise multiplier, sampling
rate and scheme, population, accountant method, delta, releases) and refuses any round
that changes them, because a single-parameter accountant would then under-count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .accounting import ClientLevelAccountant, check_positive

_PARAM_KEYS = ("noise_multiplier", "sample_rate", "sampling", "population", "method", "delta")
_STATE_VERSION = 1

CEILING_REASON = "site privacy ceiling"
"""How a refusal under the site's own ceiling begins (the monitor counts these)."""


def _accounting_params(round_config: Mapping[str, Any]) -> dict[str, Any]:
    """Pick and type-check the accounting parameters of a server round config."""
    if not isinstance(round_config, Mapping):
        raise ValueError("round_config: expected a mapping of DP parameters")
    missing = [k for k in (*_PARAM_KEYS, "accountant_rounds") if k not in round_config]
    if missing:
        raise ValueError(f"round_config: missing DP parameter(s) {', '.join(missing)}")
    params = {k: round_config[k] for k in _PARAM_KEYS}
    releases = round_config.get("releases", [])
    if not isinstance(releases, list | tuple) or not all(
            isinstance(r, int | float) and not isinstance(r, bool) and r > 0 for r in releases):
        raise ValueError(f"round_config: releases must be a list of numbers > 0, got {releases!r}")
    if releases:  # absent from the pinned parameters of a run without them (older ledgers)
        params["releases"] = [float(r) for r in releases]
    for key in ("noise_multiplier", "sample_rate", "delta"):
        if isinstance(params[key], bool) or not isinstance(params[key], int | float):
            raise ValueError(f"round_config: {key} must be a number, got {params[key]!r}")
        params[key] = float(params[key])
    return params


class SiteBudget:
    """A site's maximum client-level epsilon and its own count of what it has spent.

    Args:
        max_epsilon: the site's ceiling (> 0) at the server's announced delta.
        state: a previous :meth:`state_dict` (the site's ledger), or None for a new run.
    """

    def __init__(self, max_epsilon: float, state: dict[str, Any] | None = None) -> None:
        self.max_epsilon = check_positive(max_epsilon, "max_epsilon")
        self.params: dict[str, Any] | None = None
        self.participations = 0
        self.rounds_seen = 0
        self.epsilon = 0.0
        self._accountants: dict[tuple[Any, ...], tuple[ClientLevelAccountant, ...]] = {}
        if state is not None:
            if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
                raise ValueError(f"site budget state: expected a version {_STATE_VERSION} dict")
            self.params = state.get("params")
            self.participations = int(state["participations"])
            self.rounds_seen = int(state["rounds_seen"])
            self.epsilon = float(state["epsilon"])

    def _epsilon_with(self, params: dict[str, Any], rounds: int, participations: int) -> float:
        releases = tuple(params.get("releases", ()))
        key = (*(params[k] for k in _PARAM_KEYS), releases)
        if key not in self._accountants:
            common = {
                k: params[k]
                for k in ("noise_multiplier", "delta", "sampling", "population", "method")
            }
            self._accountants[key] = (
                ClientLevelAccountant(sample_rate=params["sample_rate"], **common),
                ClientLevelAccountant(sample_rate=1.0, **common),
            )
        amplified, own = self._accountants[key]
        return min(amplified.epsilon_of_rounds(rounds, releases=releases),
                   own.epsilon_of_rounds(participations, releases=releases))

    def admit(self, round_config: Mapping[str, Any]) -> tuple[bool, float, str]:
        """Decide whether to take part in the round described by ``round_config``.

        Args:
            round_config: the DP parameters the server sent for this round.

        Returns:
            (ok, cumulative epsilon if the site participates, one-line reason).
        """
        params = _accounting_params(round_config)
        if self.params is not None:
            changed = [k for k in (*_PARAM_KEYS, "releases")
                       if self.params.get(k) != params.get(k)]
            if changed:
                k = changed[0]
                return (
                    False,
                    math.inf,
                    f"privacy parameter {k} changed mid-run: {self.params.get(k)!r} -> "
                    f"{params.get(k)!r}; the site cannot account it",
                )
        try:
            rounds = max(self.rounds_seen, int(round_config["accountant_rounds"]))
            eps = self._epsilon_with(params, rounds, self.participations + 1)
        except ValueError as exc:
            return False, math.inf, f"round_config rejected: {exc}"
        if eps > self.max_epsilon:
            return (
                False,
                eps,
                f"{CEILING_REASON}: participating would reach epsilon={eps:.4g} > "
                f"max_epsilon={self.max_epsilon:g} at delta={params['delta']:g}",
            )
        return True, eps, f"within site ceiling: epsilon {eps:.4g} <= {self.max_epsilon:g}"

    def record_participation(self, round_config: Mapping[str, Any]) -> None:
        """Count a round the site took part in (call after sending its update).

        Args:
            round_config: the DP parameters of that round (as passed to :meth:`admit`).
        """
        params = _accounting_params(round_config)
        if self.params is None:
            self.params = params
        self.participations += 1
        self.rounds_seen = max(self.rounds_seen, int(round_config["accountant_rounds"]))
        self.epsilon = self._epsilon_with(self.params, self.rounds_seen, self.participations)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable ledger: pinned parameters, participations, rounds, epsilon."""
        return {
            "version": _STATE_VERSION,
            "max_epsilon": self.max_epsilon,
            "params": self.params,
            "participations": self.participations,
            "rounds_seen": self.rounds_seen,
            "epsilon": self.epsilon,
        }

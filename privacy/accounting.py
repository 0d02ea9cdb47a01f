"""Client-level privacy accounting for DP-FedAvg, backed by ``dp-accounting``.

One *round* of client-level DP is one sampled Gaussian mechanism: sites are sampled,
each site's update is clipped to L2 norm ``C``, the (capped-weight) sum is released
with Gaussian noise of standard deviation ``z * C`` (``z`` = ``noise_multiplier``).
This module never evaluates an RDP or PLD formula itself; it builds
``dp_accounting`` events and lets ``dp_accounting.rdp.RdpAccountant`` or
``dp_accounting.pld.PLDAccountant`` compose them.

Sampling and the neighbouring relation
--------------------------------------
* ``sampling="poisson"``: every site joins a round independently with probability
  ``sample_rate``. Neighbouring federations differ by adding or removing one site
  (``ADD_OR_REMOVE_ONE``); the L2 sensitivity of the clipped sum is ``C`` (weights are
  capped at 1), so the event is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``.
* ``sampling="fixed"``: exactly ``m = round(sample_rate * population)`` of the
  ``population`` sites are drawn without replacement. The analysis available for this
  scheme (Wang, Balle, Kasiviswanathan 2019, Thm 27) is for *replace-one* neighbours,
  under which the clipped sum moves by up to ``2C`` (one update ``u`` replaced by
  ``-u``). The Gaussian's noise-to-sensitivity ratio is therefore ``z / 2``, and the
  event is ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))``. (Flower
  1.42's ``RdpAccountant`` passes ``z`` unchanged for this scheme, i.e. it assumes
  sensitivity ``C`` under replace-one; we do not.) PLD in ``dp-accounting`` 0.6 has no
  without-replacement event, so ``method="pld"`` requires ``sampling="poisson"``.
* ``sample_rate=1.0`` means no amplification: every round is a plain Gaussian.

``noise_multiplier`` here is always the *accounted* multiplier of one round. With
adaptive clipping it is the combined multiplier of the update and clipped-count
Gaussians (see :mod:`fedsilo.privacy.dp`), which is what a round costs.

A *release* is a one-off Gaussian over every site (no sampling) with its own noise
multiplier, composed with the rounds: the noisy sum of the sites' data profiles for the
drift check (:mod:`fedsilo.privacy.profile_release`).

The state is the number of composed rounds, the releases' multipliers and the
configuration, so ``state_dict()`` is small, JSON-serialisable and a resumed run keeps
counting.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import dp_accounting
import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant, rdp_privacy_accountant

Sampling = Literal["poisson", "fixed"]
Method = Literal["rdp", "pld"]

_STATE_VERSION = 2
_READS_VERSIONS = (1, 2)  # version 1: no releases
_PLD_DISCRETIZATION = 1e-4


class _DropOrderNonConvergence(logging.Filter):
    """Drop dp-accounting's per-order "failed to converge ... Excluding this order".

    RDP is evaluated at many orders and epsilon is the minimum over them; an order whose
    series does not converge is left out, which keeps the bound valid (only possibly
    less tight). dp-accounting logs a warning per order per evaluation, which floods
    site and server logs; every other absl message passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropOrderNonConvergence())


def check_delta(delta: float, field: str = "delta") -> float:
    """Return ``delta`` as float or raise ``ValueError`` unless it lies in (0, 1).

    Args:
        delta: the delta of (epsilon, delta)-DP.
        field: option name quoted in the error message.
    """
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ValueError(f"{field}: expected a number strictly between 0 and 1, got {delta!r}")
    return float(delta)


def check_positive(value: float, field: str) -> float:
    """Return ``value`` as float or raise ``ValueError`` unless it is finite and > 0.

    Args:
        value: the number to check.
        field: option name quoted in the error message.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{field}: expected a finite number > 0, got {value!r}")
    return float(value)


def sensitivity_factor(sampling: Sampling) -> float:
    """L2 sensitivity of the capped-weight clipped sum in units of the clip norm.

    1 under add/remove-one (Poisson sampling), 2 under replace-one (fixed-size sampling).

    Args:
        sampling: ``"poisson"`` or ``"fixed"``.
    """
    return 2.0 if sampling == "fixed" else 1.0


class ClientLevelAccountant:
    """Counts client-level (epsilon, delta) of repeated sampled Gaussian rounds.

    Args:
        noise_multiplier: accounted noise multiplier ``z`` of one round (noise std on
            the clipped sum divided by the clip norm).
        sample_rate: probability a site is in a round (Poisson) or ``m / N`` (fixed);
            1.0 means no sampling amplification.
        delta: default delta at which epsilon is reported.
        sampling: ``"poisson"`` (independent inclusion) or ``"fixed"`` (exactly ``m``
            of ``population`` sites, without replacement).
        population: number of sites ``N``; required for ``sampling="fixed"``.
        method: ``"rdp"`` (Renyi DP, dp-accounting's default orders) or ``"pld"``
            (privacy loss distributions, tighter; Poisson only).
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        sampling: Sampling = "poisson",
        population: int | None = None,
        method: Method = "rdp",
    ) -> None:
        self.noise_multiplier = check_positive(noise_multiplier, "noise_multiplier")
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, int | float)
            or not 0 < sample_rate <= 1
        ):
            raise ValueError(f"sample_rate: expected a number in (0, 1], got {sample_rate!r}")
        self.sample_rate = float(sample_rate)
        self.delta = check_delta(delta)
        if sampling not in ("poisson", "fixed"):
            raise ValueError(f"sampling: expected 'poisson' or 'fixed', got {sampling!r}")
        if method not in ("rdp", "pld"):
            raise ValueError(f"method: expected 'rdp' or 'pld', got {method!r}")
        if population is not None and (
            isinstance(population, bool) or not isinstance(population, int) or population < 1
        ):
            raise ValueError(f"population: expected a positive integer, got {population!r}")
        self.sampling: Sampling = sampling
        self.method: Method = method
        self.population = population
        self.sample_size: int | None = None
        if sampling == "fixed":
            if population is None:
                raise ValueError("population: required when sampling='fixed'")
            if method == "pld":
                raise ValueError(
                    "method: 'pld' has no fixed-size (without replacement) sampling event "
                    "in dp-accounting; use method='rdp' or sampling='poisson'"
                )
            self.sample_size = max(1, round(self.sample_rate * population))
        self.rounds = 0
        self.releases: list[float] = []
        self._cache: dict[tuple[int, float, tuple[float, ...]], float] = {}
        self._one_round: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        """Accountant identifier recorded in lineage, e.g. ``dp_accounting.rdp/poisson``."""
        return f"dp_accounting.{self.method}/{self.sampling}"

    def round_event(self) -> dp_event.DpEvent:
        """The ``dp_accounting`` event of one round (see module docstring)."""
        return _round_event(self.noise_multiplier, self.sample_rate, self.sampling, self.population)

    def _fresh(self) -> dp_accounting.PrivacyAccountant:
        return _fresh_accountant(self.method, self.sampling)

    def _epsilon_after(self, rounds: int, delta: float,
                       releases: tuple[float, ...] | None = None) -> float:
        releases = tuple(self.releases) if releases is None else releases
        if rounds == 0 and not releases:
            return 0.0
        key = (rounds, delta, releases)
        if key not in self._cache:
            others = [_release_event(z, self.sampling) for z in releases]
            if self.method == "rdp":
                # RDP composes additively: rounds x (one round's RDP curve), converted by
                # dp-accounting's own compute_epsilon, exactly as compose(event, rounds).
                if self._one_round is None:
                    acct = self._fresh()
                    acct.compose(self.round_event())
                    self._one_round = (acct.orders, acct.rdp)
                orders, rdp = self._one_round
                total = rounds * rdp if rounds else np.zeros_like(rdp)  # 0 x inf is nan
                if others:
                    acct = self._fresh()
                    acct.compose(dp_event.ComposedDpEvent(others))
                    total = total + acct.rdp
                eps = rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0]
            else:
                acct = self._fresh()
                composed = [dp_event.SelfComposedDpEvent(self.round_event(), rounds)] \
                    if rounds else []
                acct.compose(dp_event.ComposedDpEvent([*composed, *others]))
                eps = acct.get_epsilon(delta)
            self._cache[key] = float(eps)
        return self._cache[key]

    def release(self, noise_multiplier: float) -> None:
        """Compose a one-off release: a Gaussian over every site with this accounted
        noise multiplier (noise std over one site's L2 contribution bound)."""
        self.releases.append(check_positive(noise_multiplier, "release noise_multiplier"))

    def step(self, rounds: int = 1) -> None:
        """Compose ``rounds`` more rounds.

        Args:
            rounds: number of rounds run (>= 1).
        """
        self.rounds += _check_rounds(rounds)

    def get_epsilon(self, delta: float | None = None) -> float:
        """Cumulative epsilon after the rounds composed so far.

        Args:
            delta: delta to report at; defaults to the accountant's ``delta``.
        """
        d = self.delta if delta is None else check_delta(delta)
        return self._epsilon_after(self.rounds, d)

    def epsilon_if_stepped(self, rounds: int = 1) -> float:
        """Cumulative epsilon if ``rounds`` more rounds ran; the state is unchanged.

        Args:
            rounds: hypothetical number of further rounds (>= 1).
        """
        return self._epsilon_after(self.rounds + _check_rounds(rounds), self.delta)

    def epsilon_of_rounds(self, rounds: int, delta: float | None = None,
                          releases: tuple[float, ...] | None = None) -> float:
        """Epsilon of ``rounds`` rounds composed from scratch (e.g. one round alone), with
        the releases composed so far (or ``releases``, e.g. ``()`` for none).

        Args:
            rounds: number of rounds (>= 0).
            delta: delta to report at; defaults to the accountant's ``delta``.
            releases: release noise multipliers to compose instead of the accountant's.
        """
        d = self.delta if delta is None else check_delta(delta)
        return self._epsilon_after(rounds, d, releases)

    def rounds_within(self, epsilon: float, limit: int, delta: float | None = None) -> int:
        """The most rounds, at most ``limit``, whose composition stays within ``epsilon``.

        Epsilon grows with the number of rounds, so a bisection over [0, limit] finds it
        with O(log limit) accountant calls. The releases composed so far count too.

        Args:
            epsilon: the budget (> 0).
            limit: the largest number of rounds of interest (>= 0), e.g. the rounds requested.
            delta: delta to account at; defaults to the accountant's ``delta``.
        """
        check_positive(epsilon, "epsilon")
        lo, hi = 0, int(limit)  # invariant: lo rounds fit; more than hi are not asked about
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.epsilon_of_rounds(mid, delta) <= epsilon:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _config(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "sampling": self.sampling,
            "population": self.population,
            "method": self.method,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: configuration, rounds and releases composed, name."""
        return {
            "version": _STATE_VERSION,
            "name": self.name,
            "rounds": self.rounds,
            "releases": list(self.releases),
            "config": self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the round count from :meth:`state_dict`.

        Args:
            state: a dict produced by :meth:`state_dict` with the same configuration.

        Raises:
            ValueError: the state is malformed or was produced with another
                configuration (the differing field is named).
        """
        if not isinstance(state, dict) or state.get("version") not in _READS_VERSIONS:
            raise ValueError(f"accountant state: expected version {_STATE_VERSION} dict")
        config = state.get("config")
        if not isinstance(config, dict):
            raise ValueError("accountant state: missing 'config'")
        for key, value in self._config().items():
            if config.get(key) != value:
                raise ValueError(
                    f"accountant state: {key} is {config.get(key)!r} in the saved state "
                    f"but {value!r} in this run"
                )
        rounds = state.get("rounds")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"accountant state: rounds must be an integer >= 0, got {rounds!r}")
        releases = state.get("releases", [])
        if not isinstance(releases, list):
            raise ValueError(f"accountant state: releases must be a list, got {releases!r}")
        self.rounds = rounds
        self.releases = [check_positive(z, "accountant state release") for z in releases]


def _check_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
    return rounds


def _round_event(
    noise_multiplier: float, sample_rate: float, sampling: Sampling, population: int | None
) -> dp_event.DpEvent:
    """One round's event; the Gaussian's multiplier is noise / sensitivity."""
    gaussian = dp_event.GaussianDpEvent(noise_multiplier / sensitivity_factor(sampling))
    if sample_rate >= 1.0:
        return gaussian
    if sampling == "fixed":
        assert population is not None
        size = max(1, round(sample_rate * population))
        return dp_event.SampledWithoutReplacementDpEvent(population, size, gaussian)
    return dp_event.PoissonSampledDpEvent(sample_rate, gaussian)


def _release_event(noise_multiplier: float, sampling: Sampling) -> dp_event.DpEvent:
    """A one-off release over every site under the run's neighbouring relation."""
    return dp_event.GaussianDpEvent(noise_multiplier / sensitivity_factor(sampling))


def _fresh_accountant(method: Method, sampling: Sampling) -> dp_accounting.PrivacyAccountant:
    relation = (
        dp_accounting.NeighboringRelation.REPLACE_ONE
        if sampling == "fixed"
        else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    if method == "pld":
        return PLDAccountant(relation, value_discretization_interval=_PLD_DISCRETIZATION)
    return RdpAccountant(neighboring_relation=relation)

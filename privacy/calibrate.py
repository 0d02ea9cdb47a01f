"""Noise calibration: the smallest noise multiplier whose budget lasts ``rounds`` rounds.

The search is ``dp_accounting.calibrate_dp_mechanism`` (Brent's method with a
fallback bisection that guarantees the returned value meets the budget) over exactly
the event :class:`fedsilo.privacy.accounting.ClientLevelAccountant` composes, so
calibrating and then accounting give ``epsilon <= target`` by construction.
"""

from __future__ import annotations

import dp_accounting
from dp_accounting import dp_event

from .accounting import (
    ClientLevelAccountant,
    Method,
    Sampling,
    _fresh_accountant,
    _release_event,
    _round_event,
    check_delta,
    check_positive,
)

#: Largest noise multiplier the search considers; beyond it the budget is unreachable
#: for any useful model.
MAX_NOISE_MULTIPLIER = 1e4
#: Absolute tolerance on the returned noise multiplier.
TOLERANCE = 1e-5


def calibrate_noise_multiplier(
    *,
    epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float,
    sampling: Sampling = "poisson",
    method: Method = "rdp",
    population: int | None = None,
    releases: tuple[float, ...] = (),
) -> float:
    """Return the smallest noise multiplier ``z`` with epsilon(rounds) <= ``epsilon``.

    Args:
        epsilon: total epsilon budget (> 0).
        delta: delta of the budget, in (0, 1).
        rounds: number of rounds the budget must last (>= 1).
        sample_rate: per-round site sampling rate in (0, 1] (see ``ClientLevelAccountant``).
        sampling: ``"poisson"`` or ``"fixed"`` (fixed-size without replacement).
        method: ``"rdp"`` or ``"pld"``.
        population: number of sites; required when ``sampling="fixed"``.
        releases: noise multipliers of one-off releases the budget also pays for (the
            drift check's data profiles; see ``ClientLevelAccountant.release``).

    Raises:
        ValueError: an argument is out of range, or no ``z <= MAX_NOISE_MULTIPLIER``
            meets the budget.
    """
    epsilon = check_positive(epsilon, "epsilon")
    delta = check_delta(delta)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
    # Validates sample_rate / sampling / method / population with the accountant's messages.
    ClientLevelAccountant(
        noise_multiplier=1.0,
        sample_rate=sample_rate,
        delta=delta,
        sampling=sampling,
        population=population,
        method=method,
    )

    def make_event(z: float) -> dp_event.DpEvent:
        return dp_event.ComposedDpEvent([
            dp_event.SelfComposedDpEvent(_round_event(z, sample_rate, sampling, population),
                                         rounds),
            *(_release_event(r, sampling) for r in releases)])

    def fresh() -> dp_accounting.PrivacyAccountant:
        return _fresh_accountant(method, sampling)

    top = fresh().compose(make_event(MAX_NOISE_MULTIPLIER)).get_epsilon(delta)
    if top > epsilon:
        raise ValueError(
            f"epsilon: {epsilon} at delta={delta} over {rounds} rounds"
            + (f" and the data profiles' release (noise multiplier {releases[0]:g})"
               if releases else "")
            + f" cannot be met with a noise multiplier <= {MAX_NOISE_MULTIPLIER:g}"
        )
    if method == "rdp":
        bracket = dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)
    else:
        # PLD is never looser than RDP, so the RDP answer is feasible; search below it
        # (a PLD at a tiny noise multiplier would need an enormous grid).
        upper = calibrate_noise_multiplier(
            epsilon=epsilon,
            delta=delta,
            rounds=rounds,
            sample_rate=sample_rate,
            sampling=sampling,
            method="rdp",
            population=population,
            releases=releases,
        )
        lower = upper / 2
        while fresh().compose(make_event(lower)).get_epsilon(delta) <= epsilon:
            upper, lower = lower, lower / 2
        bracket = dp_accounting.ExplicitBracketInterval(lower, upper)
    z = dp_accounting.calibrate_dp_mechanism(
        fresh, make_event, epsilon, delta, bracket, tol=TOLERANCE
    )
    return float(z)

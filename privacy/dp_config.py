"""Client-level DP: the run's options, what they compose with, and the results' types.

:class:`DPConfig` is what a run's ``[dp]`` table holds (validated field by field);
:func:`check_composition` and :func:`check_secure_aggregation` say which aggregators and
transports the mechanism's guarantee covers (see :mod:`fedsilo.privacy.dp` for why);
:class:`BudgetDecision` and :class:`DPResult` are what the round-level controller
(:class:`fedsilo.privacy.dp.ClientLevelDP`) returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from .accounting import Method, Sampling, check_delta, check_positive

Clipping = Literal["fixed", "adaptive"]
Where = Literal["server", "site"]
Weighting = Literal["uniform", "capped"]

#: Aggregator names client-level DP composes with (a weighted mean of clipped updates).
COMPOSES_WITH: frozenset[str] = frozenset({"mean", "weighted_mean", "fedavg"})
MECHANISM = "dp-fedavg/gaussian"


def check_composition(aggregator_name: str) -> None:
    """Raise ``ValueError`` unless client-level DP composes with ``aggregator_name``.

    Args:
        aggregator_name: registry name of the aggregation kernel (e.g. ``"mean"``).
    """
    if aggregator_name not in COMPOSES_WITH:
        raise ValueError(
            f"aggregator: '{aggregator_name}' cannot be combined with client-level DP "
            f"(its sensitivity is not bounded by clip_norm / expected_clients); "
            f"use one of {sorted(COMPOSES_WITH)}"
        )


def check_secure_aggregation(config: DPConfig) -> None:
    """Raise ``ValueError`` unless ``config`` can run under secure aggregation.

    Args:
        config: the run's DP options.
    """
    if config.where != "site":
        raise ValueError(
            "where: secure aggregation hides individual updates, so DP must clip at the "
            "sites (where='site')"
        )


@dataclass
class DPConfig:
    """Client-level DP options of a run.

    Attributes:
        epsilon: total epsilon budget; None = no budget (then ``noise_multiplier`` is
            required and epsilon is only reported).
        delta: delta of the guarantee, in (0, 1); should be below 1 / population.
        noise_multiplier: accounted noise multiplier ``z``; None = calibrate it so the
            budget lasts the configured rounds.
        clip_norm: L2 clip norm ``C`` (initial value when ``clipping="adaptive"``).
        clipping: ``"fixed"`` or ``"adaptive"`` (Andrew et al. 2021).
        target_quantile: adaptive clipping's target unclipped fraction, in (0, 1).
        clip_lr: adaptive clipping's geometric learning rate ``eta`` (> 0).
        clipped_count_stddev: noise std ``sigma_b`` on the clipped count; None =
            ``max(expected_clients / 20, z)``. Adaptive clipping only.
        where: ``"server"`` clips at the server; ``"site"`` clips at each site (the
            server verifies the norm; required with secure aggregation).
        sampling: ``"poisson"`` or ``"fixed"`` site sampling, as the server samples.
        method: accountant, ``"rdp"`` or ``"pld"``.
        secure_noise: True = CSPRNG noise; False = seeded numpy noise (simulations).
        weighting: ``"uniform"`` (every site weight 1) or ``"capped"``
            (``min(weight / weight_cap, 1)``).
        weight_cap: weight at which a site reaches full weight; required for
            ``weighting="capped"``.
        profile_noise_multiplier: accounted noise multiplier of the drift check's one
            release of the sites' summed data profiles (`fedsilo.privacy.profile_release`);
            None = no drift check under DP (it would spend budget).
    """

    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    clipping: Clipping = "fixed"
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None
    where: Where = "server"
    sampling: Sampling = "poisson"
    method: Method = "rdp"
    secure_noise: bool = True
    weighting: Weighting = "uniform"
    weight_cap: float | None = None
    profile_noise_multiplier: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DPConfig:
        """Build and validate a config from a TOML table / parsed flags.

        Args:
            data: option name -> value; unknown names are refused.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"dp: unknown option '{unknown[0]}'; expected one of {', '.join(sorted(known))}"
            )
        return cls(**dict(data)).validate()

    def validate(self) -> DPConfig:
        """Check every field; raise ``ValueError`` naming the first bad one. Returns self."""
        if self.epsilon is not None:
            check_positive(self.epsilon, "epsilon")
        check_delta(self.delta)
        if self.noise_multiplier is not None:
            check_positive(self.noise_multiplier, "noise_multiplier")
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("epsilon: set a budget (epsilon) or a noise_multiplier, or both")
        check_positive(self.clip_norm, "clip_norm")
        _check_choice(self.clipping, "clipping", ("fixed", "adaptive"))
        _check_choice(self.where, "where", ("server", "site"))
        _check_choice(self.sampling, "sampling", ("poisson", "fixed"))
        _check_choice(self.method, "method", ("rdp", "pld"))
        _check_choice(self.weighting, "weighting", ("uniform", "capped"))
        if not isinstance(self.secure_noise, bool):
            raise ValueError(f"secure_noise: expected true or false, got {self.secure_noise!r}")
        if not 0 < self.target_quantile < 1:
            raise ValueError(
                f"target_quantile: expected a number in (0, 1), got {self.target_quantile!r}"
            )
        check_positive(self.clip_lr, "clip_lr")
        if self.profile_noise_multiplier is not None:
            check_positive(self.profile_noise_multiplier, "profile_noise_multiplier")
        if self.clipped_count_stddev is not None:
            check_positive(self.clipped_count_stddev, "clipped_count_stddev")
        if self.weighting == "capped":
            if self.weight_cap is None:
                raise ValueError("weight_cap: required when weighting='capped'")
            check_positive(self.weight_cap, "weight_cap")
        return self


@dataclass(frozen=True)
class BudgetDecision:
    """Outcome of the pre-round budget check.

    Attributes:
        ok: True if the next round fits in the budget.
        epsilon_spent: cumulative epsilon so far.
        epsilon_if_run: cumulative epsilon if the next round runs.
        reason: one-line explanation (recorded in lineage when ``ok`` is False).
    """

    ok: bool
    epsilon_spent: float
    epsilon_if_run: float
    reason: str


@dataclass
class DPResult:
    """Outcome of one private aggregation.

    Attributes:
        update: float32 noised average delta (length d).
        fates: per input row, ``"accepted"``, ``"clipped"`` or ``"rejected"``.
        reasons: per rejected row, why.
        lineage: JSON-able round facts (mechanism, clip norm, noise multipliers,
            sampling, accountant, epsilon round/cumulative, delta, noise generator...).
    """

    update: np.ndarray
    fates: dict[int, str]
    lineage: dict[str, Any]
    reasons: dict[int, str] = field(default_factory=dict)


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")

"""Client-level differential privacy for federated averaging (DP-FedAvg).

Mechanism (McMahan et al. 2018, "Learning differentially private recurrent language
models"; adaptive clipping from Andrew et al. 2021, "Differentially private learning
with adaptive clipping"). Each round, with clip norm ``C``, expected number of sites
``m = q * N`` (a public constant) and accounted noise multiplier ``z``:

1. every accepted site update ``u_k`` (flat float32 model delta) is clipped,
   ``u_k <- u_k * min(1, C / ||u_k||)`` (by the server, ``where="server"``; or by the
   site, ``where="site"``, in which case the server only checks
   ``||u_k|| <= C (1 + 1e-6)`` and rejects the update otherwise);
2. the weighted sum ``S = sum_k w_k u_k`` is formed with *capped* weights
   ``w_k in [0, 1]``: ``weighting="uniform"`` uses ``w_k = 1``;
   ``weighting="capped"`` uses ``w_k = min(n_k / weight_cap, 1)`` with ``n_k`` the
   weight a site reports (e.g. its example count) and ``weight_cap`` a constant fixed
   before the run;
3. ``S + N(0, (z_u C)^2 I)`` is divided by the fixed denominator ``m`` (the
   fixed-denominator estimator of McMahan et al.; with uniform weights it is unbiased
   for the population mean of clipped updates).

Sensitivity. Because every ``w_k <= 1`` and every ``||u_k|| <= C``, adding or removing
one site moves ``S`` by at most ``C`` in L2 norm (``2C`` when a site is *replaced*,
which is the neighbouring relation of fixed-size sampling; the accountant accounts for
that factor, see :mod:`fedsilo.privacy.accounting`). The denominator ``m`` does not
depend on who took part, so the released average has sensitivity ``C / m``; dividing by
the number of sites actually present would make the denominator data-dependent and
is therefore not done. Weights must not be normalised by anything computed from the
round (a data-dependent cap would let one site rescale everybody else's
contribution), which is why ``weight_cap`` is a configured constant. With capped
weights the estimator is unbiased for ``(1/N) sum_k w_k u_k`` over the population,
i.e. sites below the cap are down-weighted; a server optimiser's learning rate absorbs
the overall scale.

Adaptive clipping (Andrew et al. 2021). Each accepted site contributes the bit
``b_k = 1[||u_k|| <= C]`` centred as ``b_k - 1/2`` (sensitivity 1/2 under
add/remove); the server releases ``B = sum_k (b_k - 1/2) + N(0, sigma_b^2)``, estimates
the unclipped fraction ``b = B / m + 1/2`` and updates ``C <- C exp(-eta (b - gamma))``
(``gamma`` = ``target_quantile``, ``eta`` = ``clip_lr``). The two Gaussians of a round
together are one Gaussian mechanism with multiplier
``(z_u^-2 + (2 sigma_b)^-2)^-1/2``; to make that equal the accounted ``z`` the update
noise uses the *effective* multiplier ``z_u = (z^-2 - (2 sigma_b)^-2)^-1/2``, which
requires ``2 sigma_b > z``. With fixed clipping ``z_u = z``. The default
``sigma_b = max(m / 20, z)``: ``m / 20`` is the paper's choice for large cohorts; the
floor ``z`` keeps ``z_u <= 1.16 z`` when few sites take part.

Composition. Server optimisers (FedAvg, FedAvgM, FedAdam, ...) only post-process the
noised average, so DP holds with all of them. Robust aggregators (median, trimmed
mean, Krum, ...) of clipped updates do not have sensitivity ``C / m``: the noise
above would not cover them, so :func:`check_composition` refuses them.

What the guarantee covers: the sequence of released models and clip norms. The
server, which samples sites and adds the noise, is trusted (central DP); lineage
records that name sites are operator records, not DP releases. With ``where="site"``
and secure aggregation (:meth:`ClientLevelDP.sum_noise`), the server never sees an
individual update, but it cannot check that a site clipped: a site that does not clip
loses the guarantee for its own data (every other site's contribution is still bounded
by ``C``, so theirs holds). An update the server rejects (norm above the bound, or not
finite) is left out, which is the same as that site sending nothing: within the
sensitivity above.

Fixed-size sampling uses replace-one neighbours, under which the clipped sum moves by
``2C`` and the centred count by 1: both sensitivities double, so the ``z_u`` formula is
unchanged and the accountant halves ``z`` (see :mod:`fedsilo.privacy.accounting`).

Lineage fields of a round (``DPResult.lineage``): ``epsilon_round`` is the epsilon of
that round alone, ``epsilon_cumulative`` the epsilon of all rounds so far (RDP/PLD
composition, not the sum of the per-round values), both at ``delta``.

The drift check's data profiles are one more release, before round 1, composed by the
same accountant (:mod:`fedsilo.privacy.profile_release`). This module holds the round
controller; options and result types are in :mod:`fedsilo.privacy.dp_config`, the
clip-and-sum math in :mod:`fedsilo.privacy.clipping` (all importable from here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from .accounting import ClientLevelAccountant, check_positive
from .calibrate import calibrate_noise_multiplier
from .clipping import (
    SITE_NORM_TOLERANCE,
    ClippedSum,
    check_updates,
    clip_update,
    clipped_sum,
    site_contribution,
    update_norm,
)
from .dp_config import (
    COMPOSES_WITH,
    MECHANISM,
    BudgetDecision,
    Clipping,
    DPConfig,
    DPResult,
    Weighting,
    Where,
    check_composition,
    check_secure_aggregation,
)
from .noise import GaussianNoise

# the public names of client-level DP, wherever they live (other modules import them from here)
__all__ = [
    "COMPOSES_WITH", "MECHANISM", "SITE_NORM_TOLERANCE", "BudgetDecision", "ClientLevelDP",
    "ClippedSum", "Clipping", "DPConfig", "DPResult", "Weighting", "Where", "check_composition",
    "check_secure_aggregation", "clip_update", "clipped_sum", "site_contribution", "update_norm",
]

_STATE_VERSION = 1


class ClientLevelDP:
    """DP-FedAvg server side: clip, combine, noise, adapt the clip norm, account.

    Args:
        config: the run's :class:`DPConfig` (validated here).
        rounds: rounds the run is configured for (the budget must last them when the
            noise multiplier is calibrated).
        sample_rate: per-round site sampling rate ``q`` in (0, 1].
        population: number of sites ``N`` in the federation.
        expected_clients: fixed denominator ``m`` (normally ``q * N``).
        seed: seed of the noise generator when ``config.secure_noise`` is False.
        releases: noise multipliers of the one-off releases the run will make (the
            drift check's profiles), which the budget pays for with the rounds.
    """

    def __init__(
        self,
        config: DPConfig,
        *,
        rounds: int,
        sample_rate: float,
        population: int,
        expected_clients: float,
        seed: int | None,
        releases: tuple[float, ...] = (),
    ) -> None:
        self.config = config.validate()
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
        if isinstance(population, bool) or not isinstance(population, int) or population < 1:
            raise ValueError(f"population: expected an integer >= 1, got {population!r}")
        self.expected_clients = check_positive(expected_clients, "expected_clients")
        self.rounds = rounds
        self.population = population
        z = config.noise_multiplier
        if z is None:
            assert config.epsilon is not None
            z = calibrate_noise_multiplier(
                epsilon=config.epsilon,
                delta=config.delta,
                rounds=rounds,
                sample_rate=sample_rate,
                sampling=config.sampling,
                method=config.method,
                population=population,
                releases=releases,
            )
        self.accountant = ClientLevelAccountant(
            noise_multiplier=z,
            sample_rate=sample_rate,
            delta=config.delta,
            sampling=config.sampling,
            population=population,
            method=config.method,
        )
        self.noise_multiplier = z
        self.sample_rate = self.accountant.sample_rate
        if config.epsilon is not None:
            first = self.accountant.epsilon_of_rounds(1, releases=releases)
            if first > config.epsilon:
                raise ValueError(
                    f"noise_multiplier: {z:g} spends epsilon={first:.4g} in a single round"
                    f"{' and the data profiles release' if releases else ''}, "
                    f"more than the budget epsilon={config.epsilon:g} (delta={config.delta:g})"
                )
        self.clipped_count_stddev: float | None = None
        self.update_noise_multiplier = z
        if config.clipping == "adaptive":
            sigma_b = config.clipped_count_stddev or max(self.expected_clients / 20, z)
            if 2 * sigma_b <= z:
                raise ValueError(
                    f"clipped_count_stddev: {sigma_b:g} must exceed noise_multiplier/2 "
                    f"= {z / 2:g} for adaptive clipping (Andrew et al. 2021)"
                )
            self.clipped_count_stddev = sigma_b
            self.update_noise_multiplier = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
        self.clip_norm = config.clip_norm
        self.noise = GaussianNoise(
            secure=config.secure_noise, seed=None if config.secure_noise else seed
        )

    def check_budget(self) -> BudgetDecision:
        """Decide, before a round, whether running it keeps epsilon within the budget."""
        spent = self.accountant.get_epsilon()
        if_run = self.accountant.epsilon_if_stepped(1)
        budget = self.config.epsilon
        if budget is None:
            return BudgetDecision(True, spent, if_run, "no epsilon budget configured")
        if if_run > budget:
            return BudgetDecision(
                False,
                spent,
                if_run,
                f"privacy budget exhausted: next round would reach epsilon={if_run:.4g} > "
                f"budget {budget:g} at delta={self.config.delta:g} "
                f"(spent {spent:.4g} over {self.accountant.rounds} rounds)",
            )
        return BudgetDecision(
            True, spent, if_run, f"within budget: epsilon {if_run:.4g} <= {budget:g}"
        )

    def rounds_in_budget(self, requested: int) -> int | None:
        """How many of ``requested`` rounds (from the start) fit the epsilon budget; None
        without a budget. `check_budget` stops the run at the same round."""
        if self.config.epsilon is None:
            return None
        return self.accountant.rounds_within(self.config.epsilon, requested)

    def round_config(self, server_round: int) -> dict[str, Any]:
        """JSON-able DP parameters sent to sites for ``server_round``.

        Contains what a site needs to clip (``clip_norm``, ``where``, weighting) and to
        recompute its epsilon with the same accountant (``noise_multiplier``,
        ``sample_rate``, ``sampling``, ``population``, ``method``, ``delta``,
        ``accountant_rounds`` = rounds composed once this round runs). None-valued
        options are left out (Flower config records cannot hold None).

        Args:
            server_round: the round number (>= 1).
        """
        out: dict[str, Any] = {
            "mechanism": MECHANISM,
            "where": self.config.where,
            "clip_norm": float(self.clip_norm),
            "clipping": self.config.clipping,
            "noise_multiplier": float(self.noise_multiplier),
            "update_noise_multiplier": float(self.update_noise_multiplier),
            "sample_rate": self.sample_rate,
            "sampling": self.config.sampling,
            "population": self.population,
            "expected_clients": self.expected_clients,
            "method": self.config.method,
            "accountant": self.accountant.name,
            "delta": self.config.delta,
            "weighting": self.config.weighting,
            "server_round": int(server_round),
            "accountant_rounds": self.accountant.rounds + 1,
        }
        if self.config.weight_cap is not None:
            out["weight_cap"] = float(self.config.weight_cap)
        if self.clipped_count_stddev is not None:
            out["clipped_count_stddev"] = self.clipped_count_stddev
        if self.accountant.releases:  # sites count them too (`SiteBudget`)
            out["releases"] = [float(r) for r in self.accountant.releases]
        return out

    def aggregate(
        self,
        updates: Sequence[np.ndarray] | np.ndarray,
        weights: np.ndarray,
        unclipped: np.ndarray | None = None,
    ) -> DPResult:
        """Clip (or verify), combine, noise, adapt the clip norm and step the accountant.

        Args:
            updates: one flat float32 delta per accepted site (a list, or an n x d array).
            weights: per-site weights (e.g. example counts), shape (n,), >= 0; used only
                when ``weighting="capped"``.
            unclipped: optional per-site bits reported by sites (``where="site"``) saying
                their raw update was within the clip norm; by default the server derives
                them from the norms it sees (exact for ``where="server"``).

        Returns:
            :class:`DPResult` with the noised average and per-row fates.
        """
        n = len(updates)
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights: expected {n} finite numbers >= 0, got shape {w.shape}")
        check_updates(updates)
        if unclipped is not None:
            reported = np.asarray(unclipped, dtype=np.float64)
            if reported.shape != (n,) or not np.all((reported == 0) | (reported == 1)):
                raise ValueError(f"unclipped: expected {n} values that are 0 or 1")
        capped = np.ones(n)
        if self.config.weighting == "capped":
            capped = np.minimum(w / float(self.config.weight_cap), 1.0)  # type: ignore[arg-type]
        s = clipped_sum(updates, capped, self.clip_norm, self.config.where)
        bits = s.bits if unclipped is None else reported
        result = self._release(s.total, float(np.sum(bits[s.keep]) - s.keep.sum() / 2))
        result.fates = dict(enumerate(s.labels.tolist()))
        result.reasons = s.reasons
        result.lineage["sites_clipped"] = int(np.count_nonzero(s.labels == "clipped"))
        result.lineage["sites_rejected"] = len(s.reasons)
        return result

    def sum_noise(
        self, summed: np.ndarray, count: int, unclipped_count: float | None = None
    ) -> DPResult:
        """Noise a securely aggregated sum of site contributions and step the accountant.

        Args:
            summed: float32 sum over sites of :func:`site_contribution` updates.
            count: number of sites in the sum.
            unclipped_count: sum of the sites' unclipped bits (required when
                ``clipping="adaptive"``).
        """
        if self.config.where != "site":
            raise ValueError("where: secure aggregation requires where='site' (sites clip)")
        summed = np.asarray(summed)
        if summed.ndim != 1 or summed.dtype != np.float32:
            raise ValueError(
                f"summed: expected a 1-D float32 array, got {summed.dtype} {summed.shape}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count: expected an integer >= 0, got {count!r}")
        if self.config.clipping == "adaptive":
            if unclipped_count is None or not 0 <= unclipped_count <= count:
                raise ValueError(
                    f"unclipped_count: adaptive clipping needs the summed bits in [0, {count}], "
                    f"got {unclipped_count!r}"
                )
            centred = float(unclipped_count) - count / 2
        else:
            centred = 0.0
        result = self._release(summed.copy(), centred)
        result.lineage["sites_summed"] = count
        return result

    def _release(self, total: np.ndarray, centred_unclipped: float) -> DPResult:
        """Add noise to the clipped sum (in place), divide by m, adapt C, account."""
        c = self.clip_norm
        m = self.expected_clients
        total += self.noise.normal(self.update_noise_multiplier * c, total.size)
        total /= np.float32(m)
        lineage: dict[str, Any] = {
            "mechanism": MECHANISM,
            "where": self.config.where,
            "clipping": self.config.clipping,
            "clip_norm": float(c),
            "noise_multiplier": float(self.noise_multiplier),
            "effective_noise_multiplier": float(self.update_noise_multiplier),
            "noise_std_on_sum": float(self.update_noise_multiplier * c),
            "expected_clients": m,
            "weighting": self.config.weighting,
            "sample_rate": self.sample_rate,
            "sampling": self.config.sampling,
            "accountant": self.accountant.name,
            "delta": self.config.delta,
            "noise_generator": self.noise.name,
        }
        if self.clipped_count_stddev is not None:
            noised = centred_unclipped + float(self.noise.normal(self.clipped_count_stddev, 1)[0])
            fraction = noised / m + 0.5
            gamma, eta = self.config.target_quantile, self.config.clip_lr
            self.clip_norm = c * math.exp(-eta * (fraction - gamma))
            lineage.update(
                clipped_count_stddev=self.clipped_count_stddev,
                unclipped_fraction_noised=fraction,
                next_clip_norm=self.clip_norm,
            )
        self.accountant.step(1)
        lineage["epsilon_round"] = self.accountant.epsilon_of_rounds(1, releases=())
        lineage["epsilon_cumulative"] = self.accountant.get_epsilon()
        lineage["rounds_accounted"] = self.accountant.rounds
        return DPResult(update=total, fates={}, lineage=lineage)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: accountant, current clip norm, noise generator state."""
        return {
            "version": _STATE_VERSION,
            "config": asdict(self.config),
            "accountant": self.accountant.state_dict(),
            "clip_norm": self.clip_norm,
            "noise": self.noise.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output so a resumed run keeps counting.

        Args:
            state: the saved state; its accountant configuration must match this run.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"dp state: expected a version {_STATE_VERSION} dict")
        self.accountant.load_state_dict(state["accountant"])
        self.clip_norm = check_positive(state["clip_norm"], "dp state clip_norm")
        self.noise.load_state_dict(state["noise"])

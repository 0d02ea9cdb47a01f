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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from .accounting import (
    ClientLevelAccountant,
    Method,
    Sampling,
    check_delta,
    check_positive,
)
from .calibrate import calibrate_noise_multiplier
from .noise import GaussianNoise

Clipping = Literal["fixed", "adaptive"]
Where = Literal["server", "site"]
Weighting = Literal["uniform", "capped"]

#: Aggregator names client-level DP composes with (a weighted mean of clipped updates).
COMPOSES_WITH: frozenset[str] = frozenset({"mean", "weighted_mean", "fedavg"})
#: Relative slack on the clip norm when the server checks a site-clipped update.
SITE_NORM_TOLERANCE = 1e-6
MECHANISM = "dp-fedavg/gaussian"
_NORM_BLOCK = 1024
_ACC_BLOCK = 1 << 16  # scratch block of the scaled accumulation (stays in cache)
_STATE_VERSION = 1


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


def _sq_norms(rows: np.ndarray) -> np.ndarray:
    """Squared L2 norms of the rows of an (n, d) float32 array, as float64.

    Float32 sums are formed over blocks of ``_NORM_BLOCK`` elements (SIMD speed) and
    the block sums are added in float64, so the relative error stays ~1e-7 at any d
    (a single float32 dot product drifts by ~1e-5 at d = 1e7).
    """
    n, d = rows.shape
    k = d // _NORM_BLOCK
    head = rows[:, : k * _NORM_BLOCK].reshape(n, k, _NORM_BLOCK)
    total = np.einsum("ijk,ijk->ij", head, head).sum(axis=1, dtype=np.float64)
    tail = rows[:, k * _NORM_BLOCK :]
    return total + np.einsum("ij,ij->i", tail, tail, dtype=np.float64)


def _accumulate(total: np.ndarray, row: np.ndarray, coef: np.float32, scratch: np.ndarray) -> None:
    """``total += coef * row`` in place, without a d-sized temporary.

    Single-threaded numpy on cache-sized blocks: multi-threaded BLAS axpy collapses
    when the cores are shared (measured 5 ms alone, 170 ms under load, for d = 2e6).
    """
    if coef == 1:
        np.add(total, row, out=total)
        return
    for start in range(0, total.size, scratch.size):
        stop = min(start + scratch.size, total.size)
        part = scratch[: stop - start]
        np.multiply(row[start:stop], coef, out=part)
        np.add(total[start:stop], part, out=total[start:stop])


def update_norm(flat: np.ndarray) -> float:
    """L2 norm of a 1-D float32 vector (blocked float32 sums added in float64)."""
    return math.sqrt(float(_sq_norms(flat.reshape(1, -1))[0]))


def clip_update(flat: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float, bool]:
    """Clip a flat update to L2 norm ``clip_norm`` (what a site does for ``where="site"``).

    Args:
        flat: 1-D float32 model delta.
        clip_norm: L2 bound ``C`` (> 0).

    Returns:
        (clipped float32 copy, norm before clipping, True if it was scaled down).
    """
    check_positive(clip_norm, "clip_norm")
    flat = np.asarray(flat)
    if flat.ndim != 1 or flat.dtype != np.float32:
        raise ValueError(f"update: expected a 1-D float32 array, got {flat.dtype} {flat.shape}")
    norm = update_norm(flat)
    if not math.isfinite(norm):
        raise ValueError("update: contains non-finite values")
    if norm <= clip_norm:
        return flat.copy(), norm, False
    # Scale slightly inside the ball so float32 rounding cannot push it over C.
    scale = np.float32(clip_norm / norm * (1 - 1e-7))
    return flat * scale, norm, True


def site_contribution(
    flat: np.ndarray, round_config: Mapping[str, Any], weight: float = 1.0
) -> tuple[np.ndarray, float]:
    """What a site sends into a secure sum: its clipped, capped-weight update and bit.

    Args:
        flat: the site's 1-D float32 model delta.
        round_config: the DP part of the server's round config
            (:meth:`ClientLevelDP.round_config`).
        weight: the site's weight (e.g. example count), used when weighting is capped.

    Returns:
        (``w * clip(flat)`` as float32, unclipped bit 1.0 or 0.0 to add to the summed
        count passed to :meth:`ClientLevelDP.sum_noise`).
    """
    clipped, _, was_clipped = clip_update(flat, float(round_config["clip_norm"]))
    if round_config.get("weighting", "uniform") == "capped":
        w = min(float(weight) / float(round_config["weight_cap"]), 1.0)
        clipped *= np.float32(w)
    return clipped, 0.0 if was_clipped else 1.0


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
            first = self.accountant.epsilon_if_stepped(1)
            if first > config.epsilon:
                raise ValueError(
                    f"noise_multiplier: {z:g} spends epsilon={first:.4g} in a single round, "
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

    # ------------------------------------------------------------------ budget / config
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
        return out

    # ------------------------------------------------------------------ aggregation
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
        d = self._check_updates(updates)
        if isinstance(updates, np.ndarray):
            norms = np.sqrt(_sq_norms(updates))
        else:
            norms = np.fromiter((update_norm(u) for u in updates), dtype=np.float64, count=n)
        capped = np.ones(n)
        if self.config.weighting == "capped":
            capped = np.minimum(w / float(self.config.weight_cap), 1.0)  # type: ignore[arg-type]
        c = self.clip_norm
        labels = np.full(n, "accepted", dtype=object)
        finite = np.isfinite(norms)  # NaN/Inf entries, or float32 overflow of the norm
        safe = np.where(finite, norms, 0.0)
        if self.config.where == "server":
            scale = np.minimum(1.0, c / np.maximum(safe, np.finfo(np.float64).tiny))
            bits = (safe <= c).astype(np.float64)
            keep = finite
            labels[finite & (norms > c)] = "clipped"
        else:
            keep = finite & (safe <= c * (1 + SITE_NORM_TOLERANCE))
            scale = np.ones(n)
            bits = (safe < c * (1 - SITE_NORM_TOLERANCE)).astype(np.float64)
        labels[~keep] = "rejected"
        reasons = {
            int(i): (
                f"update norm {norms[i]:.6g} exceeds clip_norm {c:.6g}"
                if finite[i]
                else "update norm is not finite (NaN/Inf values or overflow)"
            )
            for i in np.flatnonzero(~keep)
        }
        if unclipped is not None:
            bits = np.asarray(unclipped, dtype=np.float64)
            if bits.shape != (n,) or not np.all((bits == 0) | (bits == 1)):
                raise ValueError(f"unclipped: expected {n} values that are 0 or 1")
        fates = dict(enumerate(labels.tolist()))
        coef = (capped * scale * keep).astype(np.float32)
        total = np.zeros(d, dtype=np.float32)
        scratch = np.empty(min(d, _ACC_BLOCK), dtype=np.float32)
        for k in np.flatnonzero(coef):  # streaming accumulation, one pass per update
            _accumulate(total, updates[k], coef[k], scratch)
        result = self._release(total, float(np.sum(bits[keep]) - keep.sum() / 2))
        result.fates = fates
        result.reasons = reasons
        result.lineage["sites_clipped"] = int(np.count_nonzero(labels == "clipped"))
        result.lineage["sites_rejected"] = len(reasons)
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

    def _check_updates(self, updates: Sequence[np.ndarray] | np.ndarray) -> int:
        if isinstance(updates, np.ndarray):
            if updates.ndim != 2 or updates.dtype != np.float32:
                raise ValueError(
                    f"updates: expected an n x d float32 array, got {updates.dtype} {updates.shape}"
                )
            return int(updates.shape[1])
        if not updates:
            raise ValueError(
                "updates: empty list; pass an empty (0, d) float32 array so the model size is known"
            )
        d = None
        for i, u in enumerate(updates):
            if not isinstance(u, np.ndarray) or u.ndim != 1 or u.dtype != np.float32:
                raise ValueError(f"updates[{i}]: expected a 1-D float32 array")
            if d is None:
                d = u.size
            elif u.size != d:
                raise ValueError(f"updates[{i}]: length {u.size}, expected {d}")
        assert d is not None
        return d

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
        lineage["epsilon_round"] = self.accountant.epsilon_of_rounds(1)
        lineage["epsilon_cumulative"] = self.accountant.get_epsilon()
        lineage["rounds_accounted"] = self.accountant.rounds
        return DPResult(update=total, fates={}, lineage=lineage)

    # ------------------------------------------------------------------ state
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


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")

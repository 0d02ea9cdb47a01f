"""Attack library for simulations: model poisoning of malicious sites' deltas.

`apply_attack` rewrites the rows of an `UpdateBatch` flagged in a boolean mask.
Colluding attacks (ALIE, IPM, min-max) see the honest rows' statistics, as the
strongest ("full knowledge") threat model of their papers, and all malicious sites
send the same vector. Label flipping is data poisoning: the trainer applies
`flip_labels` to a malicious site's labels and `apply_attack` leaves its delta alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm as gaussian

from ..strategies.base import Param, SettingError
from ..strategies.batch import UpdateBatch

F32 = np.float32
AttackFn = Callable[[np.ndarray, np.ndarray, np.random.Generator, dict[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Attack:
    """One attack.

    Parameters
    ----------
    name : registry name.
    summary : one line for listings and reports.
    params : documented parameters and defaults.
    data : True for data poisoning (applied by the trainer, not to deltas).
    fn : ``fn(honest, malicious_rows, rng, params) -> (n_malicious, d) float32`` new
        malicious rows; ``honest`` and ``malicious_rows`` are stacked float32 matrices.
    """

    name: str
    summary: str
    params: dict[str, Param]
    data: bool
    fn: AttackFn | None


def _sign_flip(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
               p: dict[str, Any]) -> np.ndarray:
    return (-p["scale"] * mal).astype(F32)


def _gaussian(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
              p: dict[str, Any]) -> np.ndarray:
    return rng.normal(0.0, p["sigma"], size=mal.shape).astype(F32)


def _scaling(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
             p: dict[str, Any]) -> np.ndarray:
    return (p["factor"] * mal).astype(F32)


def _free_ride(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
               p: dict[str, Any]) -> np.ndarray:
    # the site sends back the global model it received: a zero delta, plus optional jitter
    # that a naive "exactly zero" check would miss
    return rng.normal(0.0, p["jitter"], size=mal.shape).astype(F32)


def alie_z(n: int, f: int) -> float:
    """ALIE's z_max for n sites of which f malicious: ``Phi^-1((n - s) / n)``,
    ``s = floor(n / 2 + 1) - f`` (Baruch et al. 2019)."""
    s = n // 2 + 1 - f
    return float(gaussian.ppf((n - s) / n))


def _alie(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
          p: dict[str, Any]) -> np.ndarray:
    n, f = honest.shape[0] + mal.shape[0], mal.shape[0]
    z = p["z"] if p["z"] > 0 else alie_z(n, f)
    mu = honest.mean(axis=0, dtype=np.float64)
    sigma = honest.std(axis=0, dtype=np.float64)
    row = (mu - z * sigma).astype(F32)
    return np.broadcast_to(row, mal.shape).copy()


def _ipm(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
         p: dict[str, Any]) -> np.ndarray:
    row = (-p["epsilon"] * honest.mean(axis=0, dtype=np.float64)).astype(F32)
    return np.broadcast_to(row, mal.shape).copy()


def min_max_gamma(honest: np.ndarray, mu: np.ndarray, direction: np.ndarray) -> float:
    """Largest gamma with ``max_i |mu + gamma p - h_i| <= max_{i,j} |h_i - h_j|``.

    Shejwalkar & Houmansadr search gamma by bisection; each constraint is a quadratic
    in gamma, so the limit of that search is the smallest positive root, computed
    here in closed form from one Gram matrix of the honest rows.
    """
    G = (honest @ honest.T).astype(np.float64)
    sq = np.diag(G)
    pair = sq[:, None] + sq[None, :] - 2.0 * G
    threshold = float(max(pair.max(), 0.0))
    hm = (honest @ mu.astype(F32)).astype(np.float64)
    hp = (honest @ direction.astype(F32)).astype(np.float64)
    a = float(direction @ direction)
    if a == 0.0:
        return 0.0
    b = 2.0 * (float(mu @ direction) - hp)
    c = float(mu @ mu) - 2.0 * hm + sq - threshold
    disc = np.maximum(b * b - 4.0 * a * c, 0.0)
    roots = (-b + np.sqrt(disc)) / (2.0 * a)
    return float(max(roots.min(), 0.0))


def _min_max(honest: np.ndarray, mal: np.ndarray, rng: np.random.Generator,
             p: dict[str, Any]) -> np.ndarray:
    mu = honest.mean(axis=0, dtype=np.float64)
    kind = p["perturbation"]
    if kind == "std":
        direction = -honest.std(axis=0, dtype=np.float64)
    elif kind == "unit":
        direction = -mu / max(float(np.linalg.norm(mu)), 1e-30)
    elif kind == "sign":
        direction = -np.sign(mu)
    else:
        raise SettingError(f"min_max: perturbation must be std, unit or sign, got {kind!r}")
    gamma = min_max_gamma(honest, mu, direction)
    row = (mu + gamma * direction).astype(F32)
    return np.broadcast_to(row, mal.shape).copy()


COVARIATE_SHIFT = 1.0
"""Shift of a covariate-shifted site's standardised features (one training-set std)."""

ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("sign_flip", "malicious sites send their delta negated (times scale)",
               {"scale": Param(float, 1.0, "magnitude multiplier of the flipped delta")},
               False, _sign_flip),
        Attack("gaussian", "malicious sites send N(0, sigma^2) noise",
               {"sigma": Param(float, 1.0, "standard deviation of each coordinate")},
               False, _gaussian),
        Attack("scaling", "malicious sites boost their delta by a factor",
               {"factor": Param(float, 10.0, "multiplier applied to the delta")},
               False, _scaling),
        Attack("free_ride", "free riders: malicious sites train nothing and send the global "
               "model back (a zero delta, plus N(0, jitter^2) noise)",
               {"jitter": Param(float, 0.0, "standard deviation of noise added to the zero delta")},
               False, _free_ride),
        Attack("label_flip", "data poisoning: labels y -> C - 1 - y at malicious sites",
               {}, True, None),
        Attack("covariate_shift", "data shift: malicious sites' standardised features move "
               f"by +{COVARIATE_SHIFT:g} (a shifted copy of their data)", {}, True, None),
        Attack("label_shift", "data shift: malicious sites keep only the rows of the lower "
               "half of the classes", {}, True, None),
        Attack("alie", "A Little Is Enough: mean - z * std of honest deltas (Baruch et al. 2019)",
               {"z": Param(float, 0.0, "deviation in std units; 0 picks z_max from n and f")},
               False, _alie),
        Attack("ipm", "inner product manipulation: -epsilon * honest mean (Xie et al. 2019)",
               {"epsilon": Param(float, 0.5, "scale of the negated honest mean")},
               False, _ipm),
        Attack("min_max", "min-max: honest mean pushed along -std as far as the honest "
               "diameter allows (Shejwalkar & Houmansadr 2021)",
               {"perturbation": Param(str, "std", "direction: std, unit or sign")},
               False, _min_max),
    )
}


def is_data_attack(name: str) -> bool:
    """True when `name` poisons data (applied by the trainer) rather than deltas."""
    return _lookup(name).data


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels mapped ``y -> num_classes - 1 - y`` (a new array, same dtype)."""
    y = np.asarray(y)
    if num_classes < 2:
        raise ValueError(f"flip_labels: num_classes must be >= 2, got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"flip_labels: labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return (num_classes - 1 - y).astype(y.dtype, copy=False)


def shift_features(x: np.ndarray) -> np.ndarray:
    """A covariate-shifted copy of standardised rows: every feature + `COVARIATE_SHIFT`."""
    return (np.asarray(x) + COVARIATE_SHIFT).astype(np.asarray(x).dtype, copy=False)


def lower_classes(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Mask of the rows a label-shifted site keeps: labels below ``ceil(C / 2)``; a site
    left with no row keeps them all (an empty site cannot train)."""
    keep = np.asarray(y) < -(-num_classes // 2)
    return keep if keep.any() else np.ones_like(keep)


DATA_SHIFTS = {"covariate_shift": ("feature_transform", shift_features),
               "label_shift": ("row_filter", lower_classes)}
"""Data-shift attacks: the `SiteData` option they set and its function."""


def _lookup(name: str) -> Attack:
    if name not in ATTACKS:
        raise SettingError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def apply_attack(
    name: str,
    batch: UpdateBatch,
    malicious: np.ndarray,
    rng: np.random.Generator,
    **params: Any,
) -> UpdateBatch:
    """A new batch in which the rows flagged by `malicious` carry the attack's deltas.

    Parameters
    ----------
    name : an `ATTACKS` key.
    batch : the round's batch of honest deltas (not modified).
    malicious : boolean mask over the batch rows.
    rng : randomness for stochastic attacks (Gaussian).
    params : the attack's parameters (see ``ATTACKS[name].params``).

    Data attacks and an all-false mask return `batch` itself.
    """
    attack = _lookup(name)
    mask = np.asarray(malicious, dtype=bool).reshape(-1)
    if mask.size != batch.n:
        raise ValueError(f"malicious mask has {mask.size} entries; the batch has {batch.n} rows")
    unknown = sorted(set(params) - set(attack.params))
    if unknown:
        raise SettingError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(attack.params) or 'none'}"
        )
    resolved = {k: spec.convert(k, params.get(k, spec.default)) for k, spec in attack.params.items()}
    if attack.fn is None or not mask.any():
        return batch
    mal_idx, honest_idx = np.flatnonzero(mask), np.flatnonzero(~mask)
    if honest_idx.size == 0 and name in ("alie", "ipm", "min_max"):
        raise SettingError(f"{name}: needs at least one honest row to collude against")
    honest = np.stack([batch.updates[i] for i in honest_idx]) if honest_idx.size else \
        np.zeros((0, batch.dim), F32)
    mal = np.stack([batch.updates[i] for i in mal_idx])
    new_rows = attack.fn(honest, mal, rng, resolved)
    updates = list(batch.updates)
    for row_index, row in zip(mal_idx, new_rows, strict=True):
        updates[row_index] = row
    return UpdateBatch(
        updates=updates,
        weights=batch.weights.copy(),
        site_ids=list(batch.site_ids),
        node_ids=list(batch.node_ids),
        root_update=batch.root_update,
    )

"""Federated standardisation and the encoding of a site's rows into model inputs.

Each site sends only sums over its own training rows (`site_statistics`): per numeric
feature the count of non-empty cells, their sum and their sum of squares (and, for
regression, the same of the target). The server adds them up over the sites
(`fedsilo.tasks.statistics.sum_statistics`) and every site turns the totals into the
same means and standard deviations (`Standardisation.from_statistics`): exactly the
pooled training rows' mean and (population) standard deviation, with no row leaving
its site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsilo.tasks.tabular.data import Columns
from fedsilo.tasks.tabular.schema import TabularError, TabularSchema, canon


def site_statistics(schema: TabularSchema, train: Columns) -> dict[str, np.ndarray]:
    """One site's sums over its training rows (float64 arrays; empty cells not counted)."""
    x = train.numeric
    observed = ~np.isnan(x)
    filled = np.where(observed, x, 0.0)
    out = {
        "count": observed.sum(axis=0).astype(np.float64),
        "sum": filled.sum(axis=0),
        "sumsq": (filled * filled).sum(axis=0),
    }
    if schema.kind == "regression":
        y = train.target.astype(np.float64)
        out.update(target_count=np.array([float(len(y))]), target_sum=np.array([y.sum()]),
                   target_sumsq=np.array([(y * y).sum()]))
    return out


@dataclass(frozen=True)
class Standardisation:
    """Means and standard deviations of the numeric features (and a regression target)."""

    mean: np.ndarray
    std: np.ndarray
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def from_statistics(cls, schema: TabularSchema,
                        stats: Mapping[str, np.ndarray]) -> Standardisation:
        """From summed statistics; a zero standard deviation (a constant column) becomes 1."""
        width = len(schema.numeric_features)
        keys = ("count", "sum", "sumsq")
        if schema.kind == "regression":
            keys += ("target_count", "target_sum", "target_sumsq")
        for key in keys:
            size = width if key in ("count", "sum", "sumsq") else 1
            if key not in stats or np.shape(stats[key]) != (size,):
                raise TabularError(f"statistics: expected {key!r} of shape ({size},), got "
                                   f"{np.shape(stats[key]) if key in stats else 'nothing'}")
        mean, std = _moments(stats["count"], stats["sum"], stats["sumsq"])
        if schema.kind != "regression":
            return cls(mean, std)
        t_mean, t_std = _moments(stats["target_count"], stats["target_sum"], stats["target_sumsq"])
        return cls(mean, std, float(t_mean[0]), float(t_std[0]))

    def to_json(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "target_mean": self.target_mean, "target_std": self.target_std}


def _moments(count: Any, total: Any, sumsq: Any) -> tuple[np.ndarray, np.ndarray]:
    count = np.asarray(count, dtype=np.float64)
    safe = np.maximum(count, 1.0)
    mean = np.asarray(total, dtype=np.float64) / safe
    var = np.maximum(np.asarray(sumsq, dtype=np.float64) / safe - mean * mean, 0.0)
    std = np.sqrt(var)
    # a constant (or never observed) column: centred, not scaled
    std = np.where((std <= 1e-12 * np.maximum(np.abs(mean), 1.0)) | (count < 1), 1.0, std)
    return mean, std


def encode(schema: TabularSchema, cols: Columns, scale: Standardisation) -> np.ndarray:
    """Model inputs (float32): numeric features imputed and standardised, categorical ones
    imputed and one-hot over their declared categories, in schema order."""
    blocks: list[np.ndarray] = []
    num_i = cat_i = 0
    for feature in schema.features:
        if feature.numeric:
            mean, std = scale.mean[num_i], scale.std[num_i]
            z = (cols.numeric[:, num_i] - mean) / std
            if feature.impute is not None:
                fill = 0.0 if feature.impute == "mean" else (float(feature.impute) - mean) / std
                z = np.where(np.isnan(z), fill, z)
            blocks.append(z[:, None])
            num_i += 1
        else:
            codes = cols.categorical[:, cat_i].copy()
            if feature.impute is not None:
                keys = [canon(c) for c in feature.categories or ()]
                codes[codes < 0] = keys.index(canon(feature.impute))
            blocks.append(np.eye(feature.width)[codes])
            cat_i += 1
    return np.concatenate(blocks, axis=1).astype(np.float32)


def scaled_target(schema: TabularSchema, cols: Columns, scale: Standardisation) -> np.ndarray:
    """The training target: class codes (int64), standardised regression targets or survival
    times (float32)."""
    if schema.kind in ("binary", "multiclass"):
        return cols.target.astype(np.int64)
    if schema.kind == "regression":
        return ((cols.target - scale.target_mean) / scale.target_std).astype(np.float32)
    return cols.target.astype(np.float32)

"""A site's data profile: what the run's drift check knows of a site's training data.

Contract: a profile is a dict of count arrays, computed by the site from its own rows
(`Task.data_profile`) on bins fixed by the task, never from the data of another site:

* ``profile.rows``: shape (1,), the number of rows;
* ``profile.features``: shape (F, B), row counts per feature (F) and bin (B);
* ``profile.labels``: shape (C,), row counts per class (absent for a task without classes).

Because the bins are the task's, every site's profile has the same names and shapes:
profiles add up array by array (the federation's profile is the sum of the sites', also
under SecAgg+, where they travel as federated statistics) and a site's profile in one run
can be compared with its profile in another (`fedsilo.governance.drift`). The arrays
travel in the statistics' JSON form (`fedsilo.tasks.statistics.encode_statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsilo.governance.profile_names import FEATURES, LABELS, PREFIX, ROWS

__all__ = ["FEATURES", "LABELS", "PREFIX", "ROWS", "Z_EDGES", "frequency_profile",
           "histogram_profile", "split_profile"]

Z_EDGES = np.array([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
"""Inner bin edges of a standardised feature (z-scores): 10 bins, the outer two open."""


def histogram_profile(x: np.ndarray, y: np.ndarray | None, num_classes: int | None,
                      edges: np.ndarray = Z_EDGES) -> dict[str, np.ndarray]:
    """The profile of rows ``x`` (n, F) with labels ``y`` (n,) in ``[0, num_classes)``.

    ``edges`` are inner bin edges, shared by every feature (1-D, B - 1 values) or one
    row per feature ((F, B - 1)); a value equal to an edge falls in the bin above it.
    """
    x = np.asarray(x, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"histogram_profile: x must be 2-D (rows, features), got shape {x.shape}")
    n, num_features = x.shape
    per_feature = np.broadcast_to(edges, (num_features, edges.shape[-1]))
    bins = per_feature.shape[1] + 1
    # bin of every value: how many of its feature's edges lie at or below it
    index = (x[:, :, None] >= per_feature[None, :, :]).sum(axis=2)
    flat = (np.arange(num_features) * bins)[None, :] + index
    features = np.bincount(flat.ravel(), minlength=num_features * bins)
    out = {ROWS: np.array([n], dtype=np.float64),
           FEATURES: features.reshape(num_features, bins).astype(np.float64)}
    if y is not None and num_classes:
        out[LABELS] = np.bincount(np.asarray(y, dtype=np.int64),
                                  minlength=num_classes).astype(np.float64)
    return out


def split_profile(stats: Mapping[str, np.ndarray] | None
                  ) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
    """(the task's own statistics, the profile) of arrays that carry both; None for a part
    that is empty."""
    if not stats:
        return None, None
    own = {k: v for k, v in stats.items() if not k.startswith(PREFIX)}
    profile = {k: v for k, v in stats.items() if k.startswith(PREFIX)}
    return own or None, profile or None


def frequency_profile(profile: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``profile`` as one site's contribution to a client-level DP release
    (`fedsilo.privacy.profile_release`): rows 1, every count divided by the site's rows
    (all 0 for a site without rows)."""
    rows = float(np.asarray(profile[ROWS], dtype=np.float64).reshape(-1)[0])
    scale = 1.0 / rows if rows > 0 else 0.0
    out = {k: np.asarray(v, dtype=np.float64) * scale for k, v in profile.items() if k != ROWS}
    out[ROWS] = np.array([1.0 if rows > 0 else 0.0])
    return out

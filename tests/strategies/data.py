"""Shared test data for the strategies tests."""

from __future__ import annotations

import numpy as np

from fedsilo.strategies.batch import UpdateBatch

LAYERS = {"conv.w": (2, 3, 2), "conv.b": (3,), "fc.w": (4, 5), "fc.b": (5,)}
DIM = int(sum(np.prod(s) for s in LAYERS.values()))


def split_layers(flat: np.ndarray) -> dict[str, np.ndarray]:
    """Split a flat vector into the LAYERS shapes (copies)."""
    out, start = {}, 0
    for name, shape in LAYERS.items():
        size = int(np.prod(shape))
        out[name] = flat[start : start + size].reshape(shape).copy()
        start += size
    return out


def random_batch(n: int, d: int = DIM, seed: int = 0, scale: float = 1.0) -> UpdateBatch:
    """n random float32 deltas with integer example counts in [10, 100)."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    weights = rng.integers(10, 100, size=n)
    return UpdateBatch(
        updates=list(X), weights=weights, site_ids=[f"s{i}" for i in range(n)]
    )


def batch_of(X: np.ndarray, weights: np.ndarray | None = None) -> UpdateBatch:
    """A batch whose rows are the rows of X."""
    X = np.asarray(X, dtype=np.float32)
    w = np.ones(len(X)) if weights is None else weights
    return UpdateBatch(updates=list(X), weights=w, site_ids=[f"s{i}" for i in range(len(X))])

"""`UpdateBatch`: immutable, computes each reduction once, carries over what stays valid;
screening takes its norms from the batch."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from data import batch_of
from helpers.messages import message, reply_content

from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.strategies import make_aggregator
from fedsilo.strategies.batch import UpdateBatch, mean_coefficients
from fedsilo.strategies.pipeline import batch_from_replies

D = 3 * 2048 + 77


def _x(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32)
    x[:, :50] = np.round(x[:, :50])  # ties: many equal values per coordinate
    return x


def test_a_batch_cannot_be_changed() -> None:
    batch = batch_of(_x(3), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(FrozenInstanceError):
        batch.updates = []  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        batch.weights = np.ones(3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        batch.updates[0] = np.zeros(D, np.float32)  # type: ignore[index]
    with pytest.raises(ValueError, match="read-only"):
        batch.weights[0] = 5.0
    with pytest.raises(FrozenInstanceError):  # a new batch: with_root_update
        batch.root_update = np.ones(D, np.float32)  # type: ignore[misc]
    with pytest.raises(ValueError, match="fields disagree: 2 updates, 3 weights"):
        UpdateBatch(updates=list(_x(2)), weights=np.ones(3), site_ids=["a", "b"])


def test_reductions_are_computed_once_and_match_numpy() -> None:
    x = _x(7, seed=1)
    w = np.arange(1.0, 8.0)
    batch = batch_of(x, w)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(batch.median, np.median(x, axis=0))  # exact
    assert batch.median is batch.median
    np.testing.assert_allclose(batch.sq_norms, (x64**2).sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(batch.gram, x64 @ x64.T, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(batch.weighted_mean, (w / w.sum()) @ x64, rtol=1e-5, atol=1e-6)
    assert batch.weighted_mean is batch.weighted_mean
    coeffs, factor = mean_coefficients(w)  # summed with these, then scaled by factor
    assert factor * coeffs.sum() == pytest.approx(1.0)
    zero = batch_of(x[:2], np.zeros(2))  # no weight at all: the plain mean
    np.testing.assert_allclose(zero.weighted_mean, x64[:2].mean(axis=0), rtol=1e-6)


def test_subset_and_root_update_carry_over_what_stays_valid() -> None:
    x = _x(5, seed=2)
    batch = batch_of(x, np.arange(1.0, 6.0))
    G, sq, med = batch.gram, batch.sq_norms, batch.median
    assert batch.subset(range(5)) is batch  # all rows in order: the same batch
    sub = batch.subset([4, 0, 2])
    assert sub.site_ids == ("s4", "s0", "s2") and list(sub.weights) == [5.0, 1.0, 3.0]
    np.testing.assert_array_equal(sub.gram, G[np.ix_([4, 0, 2], [4, 0, 2])])
    np.testing.assert_array_equal(sub.sq_norms, sq[[4, 0, 2]])
    assert "median" not in vars(sub)  # of all rows: computed again when asked
    np.testing.assert_array_equal(sub.median, np.median(x[[4, 0, 2]], axis=0))
    root = np.ones(D, np.float32)
    rooted = batch.with_root_update(root)
    assert rooted is not batch and batch.root_update is None and rooted.root_update is root
    assert rooted.median is med and rooted.gram is G
    other = batch.with_updates([r + 1 for r in x])
    assert "gram" not in vars(other)
    np.testing.assert_allclose(other.median, np.median(x + 1, axis=0))


def test_screening_norms_come_from_the_batch_and_rejected_rows_leave_it() -> None:
    rng = np.random.default_rng(12)
    x = 0.01 * rng.standard_normal((7, D)).astype(np.float32)
    x[2, 5] = np.nan  # rejected: non-finite
    x[5] *= 1e4  # rejected: norm above the bound
    replies = [message(reply_content(x[i], 5 + i), i + 1) for i in range(7)]
    policy = ScreeningPolicy(max_norm=0.1 * np.sqrt(D))
    batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy, median=True)
    assert list(rejected) == ["node:3", "node:6"]
    assert rejected["node:3"] == "update: 1 non-finite values (NaN or Inf)"
    keep = [0, 1, 3, 4, 6]
    assert batch.node_ids == (1, 2, 4, 5, 7)
    assert "sq_norms" in vars(batch)  # screening's norms, kept for the aggregator
    x64 = x[keep].astype(np.float64)
    np.testing.assert_allclose(batch.sq_norms, (x64**2).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(batch.median, np.median(x[keep], axis=0))


def test_both_kernel_paths_reach_a_stationary_point_and_the_exact_median(kernel_path: str) -> None:
    rng = np.random.default_rng(4)
    Y = rng.standard_normal((9, 300)).astype(np.float32)
    w = rng.integers(1, 50, 9).astype(float)
    res = make_aggregator("geometric_median:tol=1e-10,max_iter=500").aggregate(batch_of(Y, w))
    z = res.update.astype(np.float64)
    grad = sum(wi * (y - z) / np.linalg.norm(y - z)
               for wi, y in zip(w, Y.astype(np.float64), strict=True))
    assert np.linalg.norm(grad) / w.sum() < 1e-4  # a stationary point of the objective
    med = make_aggregator("median").aggregate(batch_of(Y)).update
    np.testing.assert_array_equal(med, np.median(Y, axis=0))

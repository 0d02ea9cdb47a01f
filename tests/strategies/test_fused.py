"""The compiled one-pass kernel (norms + weighted sum) and the pipeline's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.messages import message, reply_content

from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.strategies import kernels, pipeline
from fedsilo.strategies.batch import mean_coefficients
from fedsilo.strategies.fused import screen_and_sum
from fedsilo.strategies.pipeline import batch_from_replies

# longer than one accumulator block (2^18) and not a multiple of the chunk: every edge runs
D = (1 << 18) + 4099


def _rows(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32)
    # read-only views of bytes (as decoded from messages) mixed with writable arrays
    return [np.frombuffer(x[i].tobytes(), np.float32) if i % 2 else x[i] for i in range(n)]


def test_sum_and_norms_match_float64_references() -> None:
    rows = _rows(7)
    coeffs = np.array([0.5, 1.0, 2.0, 0.0, 3.0, 0.25, 1.5])
    total, sq = screen_and_sum(rows, coeffs)
    x = np.stack(rows).astype(np.float64)
    assert total is not None and total.dtype == np.float32 and total.shape == (D,)
    np.testing.assert_allclose(total, coeffs @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sq, np.einsum("ij,ij->i", x, x), rtol=1e-6)
    none, sq_only = screen_and_sum(rows)
    assert none is None
    np.testing.assert_allclose(sq_only, sq, rtol=1e-6)  # four-row and one-row sweeps


def test_non_finite_values_and_float32_overflow_reach_the_norm() -> None:
    rows = _rows(3)
    bad_nan, bad_inf, huge = rows[0].copy(), rows[1].copy(), rows[2].copy()
    bad_nan[D - 1] = np.nan  # in the last, partial chunk
    bad_inf[5] = -np.inf
    huge[1000] = 3e19  # finite, but its square overflows float32
    _, sq = screen_and_sum([bad_nan, bad_inf, huge, rows[0]], np.ones(4))
    assert np.isnan(sq[0]) and np.isposinf(sq[1]) and np.isposinf(sq[2]) and np.isfinite(sq[3])


def test_rejects_rows_of_the_wrong_shape_or_dtype() -> None:
    rows = _rows(2)
    with pytest.raises(ValueError, match="1-D float32 vectors of 266243 values, got float64"):
        screen_and_sum([rows[0], rows[1].astype(np.float64)])
    with pytest.raises(ValueError, match="3 coefficients for 2 rows"):
        screen_and_sum(rows, np.ones(3))


def test_empty_round() -> None:
    total, sq = screen_and_sum([], np.zeros(0), dim=5)
    assert total is not None and total.shape == (5,) and not total.any() and sq.shape == (0,)


@pytest.mark.parametrize("fused_min", [0, 1 << 62])  # compiled kernel, then BLAS per row
def test_pipeline_paths_agree_and_resum_after_a_norm_rejection(monkeypatch, fused_min) -> None:
    monkeypatch.setattr(pipeline, "FUSED_MIN_VALUES", fused_min)
    monkeypatch.setattr(kernels, "FUSED_MIN_VALUES", fused_min)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, D)).astype(np.float32)
    x[2, 7] = np.nan  # rejected: non-finite
    x[4] *= 100.0  # rejected: norm above the bound
    replies = [message(reply_content(x[i], 10 * (i + 1)), i + 1) for i in range(6)]
    policy = ScreeningPolicy(max_norm=5 * np.sqrt(D))
    batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy, accumulate=True)
    assert list(rejected) == ["node:3", "node:5"]
    assert rejected["node:3"] == "update: 1 non-finite values (NaN or Inf)"
    assert rejected["node:5"].startswith("update: L2 norm ") and "exceeds the bound" in rejected["node:5"]
    assert batch.node_ids == [1, 2, 4, 6]
    keep = [0, 1, 3, 5]
    # the sum is over the counts scaled below 1 by a power of two (mean_coefficients)
    coeffs, factor = mean_coefficients(10.0 * (np.array(keep) + 1))
    assert coeffs.max() < 1 and factor * coeffs.sum() == 1.0
    expected = coeffs @ x[keep].astype(np.float64)
    total = batch.precomputed_sum()
    assert total is not None
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.weighted_sum(batch.updates, np.ones(4)),
                               x[keep].astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [1, 4, 7])  # padding to a multiple of four, and none
def test_gram_of_rows_matches_a_float64_matmul(n: int) -> None:
    from fedsilo.strategies.fused import gram

    rows = _rows(n, seed=n)
    x = np.stack(rows).astype(np.float64)
    G = gram(rows)
    assert G.shape == (n, n) and G.dtype == np.float64
    np.testing.assert_allclose(G, x @ x.T, rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(G, G.T)
    for threads in (1, 3):  # column ranges on threads: the same sums up to rounding
        np.testing.assert_allclose(gram(rows, threads=threads), G, rtol=1e-12)


def test_krum_selects_the_same_rows_on_both_paths(monkeypatch) -> None:
    from fedsilo.strategies.aggregators.krum import krum_select

    rng = np.random.default_rng(9)
    honest = 0.01 * rng.standard_normal((9, D)).astype(np.float32)
    outliers = honest[:2] + 1.0  # two far-away updates
    rows = [*honest, *outliers]
    monkeypatch.setattr(kernels, "FUSED_MIN_VALUES", 0)
    fused_choice, fused_scores = krum_select(rows, 2, 4)
    monkeypatch.setattr(kernels, "FUSED_MIN_VALUES", 1 << 62)
    blas_choice, blas_scores = krum_select(rows, 2, 4)
    np.testing.assert_array_equal(fused_choice, blas_choice)
    assert not set(fused_choice.tolist()) & {9, 10}
    np.testing.assert_allclose(fused_scores, blas_scores, rtol=1e-4)


@pytest.mark.parametrize("fused_min", [0, 1 << 62])
def test_screening_takes_norms_from_the_gram_and_drops_rejected_rows(monkeypatch, fused_min) -> None:
    from fedsilo.strategies import make_aggregator

    monkeypatch.setattr(kernels, "FUSED_MIN_VALUES", fused_min)
    rng = np.random.default_rng(11)
    x = 0.01 * rng.standard_normal((9, D)).astype(np.float32)
    x[1, 3] = np.inf  # rejected: non-finite (its Gram row and column are inf/NaN)
    x[6] *= 1e4  # rejected: norm above the bound
    replies = [message(reply_content(x[i], 5 + i), i + 1) for i in range(9)]
    policy = ScreeningPolicy(max_norm=0.1 * np.sqrt(D))
    batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy, gram=True)
    assert list(rejected) == ["node:2", "node:7"]
    assert rejected["node:2"] == "update: 1 non-finite values (NaN or Inf)"
    keep = [0, 2, 3, 4, 5, 7, 8]
    G = batch.precomputed_gram()
    assert G is not None and G.shape == (7, 7)
    assert batch.precomputed_gram_sum() is None  # it held a rejected (non-finite) row
    xk = x[keep].astype(np.float64)
    # float32 accumulation: off-diagonal entries are sums of ~D terms that mostly cancel,
    # so their error is relative to the rows' norms (~27 here), not to the entry itself
    # (the summation order, and with it the last bits, depends on the CPU's vector width)
    np.testing.assert_allclose(G, xk @ xk.T, rtol=1e-5, atol=1e-6 * float(G.diagonal().max()))
    sub = batch.subset([4, 0, 2])
    np.testing.assert_array_equal(sub.precomputed_gram(), G[np.ix_([4, 0, 2], [4, 0, 2])])
    krum = make_aggregator("multi_krum:f=1,m=4")
    with_gram = krum.aggregate(batch)
    batch.gram = None  # recomputed from the rows: the same selection and scores
    without = krum.aggregate(batch)
    assert with_gram.info == without.info
    np.testing.assert_allclose(with_gram.scores, without.scores, rtol=1e-6)
    batch.gram = G
    batch.updates[0] = batch.updates[0].copy()  # a replaced row invalidates the Gram
    assert batch.precomputed_gram() is None


def test_gram_and_sum_adds_the_float64_weighted_sum_in_the_same_pass() -> None:
    from fedsilo.strategies.fused import gram, gram_and_sum

    rows = _rows(7, seed=3)
    x = np.stack(rows).astype(np.float64)
    c = np.array([1.0, 50.0, 3.0, 0.0, 7.0, 2.5, 1e3])
    for threads in (1, 3):
        G, total = gram_and_sum(rows, c, threads=threads)
        assert total.dtype == np.float64 and total.shape == (D,)
        np.testing.assert_allclose(total, c @ x, rtol=1e-12, atol=1e-9)  # float64 throughout
        np.testing.assert_allclose(G, gram(rows, threads=threads), rtol=1e-12)
    with pytest.raises(ValueError, match="gram_and_sum: 2 coefficients for 7 rows"):
        gram_and_sum(rows, np.ones(2))


@pytest.mark.parametrize("fused_min", [0, 1 << 62])
def test_multi_krum_mean_from_the_screening_sum_matches_the_direct_mean(monkeypatch, fused_min) -> None:
    from fedsilo.strategies import make_aggregator

    monkeypatch.setattr(kernels, "FUSED_MIN_VALUES", fused_min)
    rng = np.random.default_rng(21)
    x = 0.01 * rng.standard_normal((11, D)).astype(np.float32)
    x[3] = 1e4  # an attacker 10^6 times larger: the sum minus it must not cancel
    x[8] += 0.5  # another outlier
    counts = rng.integers(10, 100, size=11)
    replies = [message(reply_content(x[i], int(counts[i])), i + 1) for i in range(11)]
    policy = ScreeningPolicy(max_norm=1e9)
    batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy, gram=True)
    assert not rejected and batch.precomputed_gram_sum() is not None
    krum = make_aggregator("multi_krum:f=2,m=9")
    result = krum.aggregate(batch)
    chosen = result.info["selected"]
    assert sorted(chosen) == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    w = counts[chosen].astype(np.float64)
    expected = (w / w.sum()) @ x[chosen].astype(np.float64)
    np.testing.assert_allclose(result.update, expected, rtol=1e-5, atol=1e-8)
    batch.gram_sum = None  # the direct path: the same mean
    np.testing.assert_allclose(krum.aggregate(batch).update, result.update, rtol=1e-5, atol=1e-8)

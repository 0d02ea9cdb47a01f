"""The optional numba accelerator (`fused`) against the numpy reference kernels."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.messages import message, reply_content

from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.strategies import kernels
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


def batch_of_rows(rows: list[np.ndarray]):
    from fedsilo.strategies.batch import UpdateBatch

    return UpdateBatch(updates=rows, weights=np.arange(1.0, len(rows) + 1),
                       site_ids=[f"s{i}" for i in range(len(rows))])


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


@pytest.mark.parametrize("accelerator", ["numba", "numpy"])
def test_pipeline_and_mean_agree_on_both_kernel_paths(accelerator: str) -> None:
    previous = kernels.use_accelerator(accelerator)
    try:
        rng = np.random.default_rng(5)
        x = rng.standard_normal((6, D)).astype(np.float32)
        x[2, 7] = np.nan  # rejected: non-finite
        x[4] *= 100.0  # rejected: norm above the bound
        replies = [message(reply_content(x[i], 10 * (i + 1)), i + 1) for i in range(6)]
        policy = ScreeningPolicy(max_norm=5 * np.sqrt(D))
        batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy)
        assert list(rejected) == ["node:3", "node:5"]
        assert rejected["node:3"] == "update: 1 non-finite values (NaN or Inf)"
        assert rejected["node:5"].startswith("update: L2 norm ") and "exceeds the bound" in rejected["node:5"]
        assert batch.node_ids == (1, 2, 4, 6)
        keep = [0, 1, 3, 5]
        # the sum is over the counts scaled below 1 by a power of two (mean_coefficients)
        coeffs, factor = mean_coefficients(10.0 * (np.array(keep) + 1))
        assert coeffs.max() < 1 and factor * coeffs.sum() == 1.0
        expected = (coeffs * factor) @ x[keep].astype(np.float64)
        # compiled: screening's pass also summed the rows (then dropped with the rejected)
        assert ("weighted_mean" in vars(batch)) is False
        np.testing.assert_allclose(batch.weighted_mean, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kernels.weighted_sum(batch.updates, np.ones(4)),
                                   x[keep].astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-4)
    finally:
        kernels.use_accelerator(previous)


@pytest.mark.parametrize("n", [1, 4, 7])  # padding to a multiple of four, and none
def test_gram_of_rows_matches_a_float64_matmul_and_the_numpy_kernel(n: int) -> None:
    from fedsilo.strategies.fused import gram

    rows = _rows(n, seed=n)
    x = np.stack(rows).astype(np.float64)
    G = gram(rows)
    assert G.shape == (n, n) and G.dtype == np.float64
    np.testing.assert_allclose(G, x @ x.T, rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(G, G.T)
    np.testing.assert_allclose(G, kernels.gram(np.stack(rows)), rtol=1e-5, atol=1e-2)


def test_accelerated_kernels_equal_the_numpy_reference() -> None:
    rows = _rows(6, seed=8)
    coeffs = np.array([0.1, 0.2, 0.0, 0.3, 0.15, 0.25])
    reference = (kernels.weighted_sum(rows, coeffs), kernels.row_dots(rows),
                 kernels.gram_of_rows(rows))
    previous = kernels.use_accelerator("numba")
    try:
        compiled = (kernels.weighted_sum(rows, coeffs), kernels.row_dots(rows),
                    kernels.gram_of_rows(rows))
    finally:
        kernels.use_accelerator(previous)
    np.testing.assert_allclose(compiled[0], reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(compiled[1], reference[1], rtol=1e-6)
    np.testing.assert_allclose(compiled[2], reference[2], rtol=1e-5, atol=1e-2)
    previous = kernels.use_accelerator("numba")
    try:
        full = batch_of_rows(rows)
        _ = full.sq_norms  # one compiled pass: the norms and the mean
        assert "weighted_mean" in vars(full)
    finally:
        kernels.use_accelerator(previous)
    np.testing.assert_allclose(full.weighted_mean, batch_of_rows(rows).weighted_mean,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown accelerator 'cuda'"):
        kernels.use_accelerator("cuda")


def test_krum_selects_the_same_rows_on_both_paths() -> None:
    from fedsilo.strategies.aggregators.krum import krum_select

    rng = np.random.default_rng(9)
    honest = 0.01 * rng.standard_normal((9, D)).astype(np.float32)
    outliers = honest[:2] + 1.0  # two far-away updates
    rows = [*honest, *outliers]
    previous = kernels.use_accelerator("numba")
    try:
        fused_choice, fused_scores = krum_select(rows, 2, 4)
    finally:
        kernels.use_accelerator(previous)
    blas_choice, blas_scores = krum_select(rows, 2, 4)
    np.testing.assert_array_equal(fused_choice, blas_choice)
    assert not set(fused_choice.tolist()) & {9, 10}
    np.testing.assert_allclose(fused_scores, blas_scores, rtol=1e-4)


def test_screening_drops_rejected_rows_and_krum_uses_the_batch_gram() -> None:
    from fedsilo.strategies import make_aggregator

    rng = np.random.default_rng(11)
    x = 0.01 * rng.standard_normal((9, D)).astype(np.float32)
    x[1, 3] = np.inf  # rejected: non-finite
    x[6] *= 1e4  # rejected: norm above the bound
    replies = [message(reply_content(x[i], 5 + i), i + 1) for i in range(9)]
    policy = ScreeningPolicy(max_norm=0.1 * np.sqrt(D))
    batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy, gram=True)
    assert list(rejected) == ["node:2", "node:7"]
    assert rejected["node:2"] == "update: 1 non-finite values (NaN or Inf)"
    keep = [0, 2, 3, 4, 5, 7, 8]
    krum = make_aggregator("multi_krum:f=1,m=4")
    with_gram = krum.aggregate(batch)
    G = batch.gram  # computed by the aggregation, kept on the batch
    assert G.shape == (7, 7)
    xk = x[keep].astype(np.float64)
    # float32 accumulation: off-diagonal entries are sums of ~D terms that mostly cancel,
    # so their error is relative to the rows' norms (~27 here), not to the entry itself
    np.testing.assert_allclose(G, xk @ xk.T, rtol=1e-5, atol=1e-6 * float(G.diagonal().max()))
    fresh = batch.with_updates(batch.updates)  # nothing cached: the Gram is computed again
    without = krum.aggregate(fresh)
    assert with_gram.info == without.info
    np.testing.assert_allclose(with_gram.scores, without.scores, rtol=1e-6)


def test_multi_krum_mean_of_the_chosen_rows_does_not_cancel() -> None:
    from fedsilo.strategies import make_aggregator

    rng = np.random.default_rng(21)
    x = 0.01 * rng.standard_normal((11, D)).astype(np.float32)
    x[3] = 1e4  # an attacker 10^6 times larger: it must not leak into the mean
    x[8] += 0.5  # another outlier
    counts = rng.integers(10, 100, size=11)
    replies = [message(reply_content(x[i], int(counts[i])), i + 1) for i in range(11)]
    policy = ScreeningPolicy(max_norm=1e9)
    batch, rejected = batch_from_replies(replies, dim=D, site_of={}, policy=policy, gram=True)
    assert not rejected
    krum = make_aggregator("multi_krum:f=2,m=9")
    result = krum.aggregate(batch)
    chosen = result.info["selected"]
    assert sorted(chosen) == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    w = counts[chosen].astype(np.float64)
    expected = (w / w.sum()) @ x[chosen].astype(np.float64)
    np.testing.assert_allclose(result.update, expected, rtol=1e-5, atol=1e-8)

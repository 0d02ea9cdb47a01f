"""Aggregators without a Flower counterpart, against direct numpy/scipy formulas;
fates, scores and refused settings."""

from __future__ import annotations

import numpy as np
import pytest
from data import batch_of, random_batch
from scipy.optimize import minimize

from fedsilo.strategies import SettingError, make_aggregator


def test_geometric_median_matches_scipy_minimiser(kernel_path: str) -> None:
    batch = random_batch(9, d=5, seed=3)
    X, w = batch.stacked.astype(np.float64), batch.weights / batch.weights.sum()
    objective = lambda z: float(w @ np.linalg.norm(X - z, axis=1))  # noqa: E731
    ref = minimize(objective, X.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000}).x
    result = make_aggregator("geometric_median:tol=1e-10,max_iter=1000").aggregate(batch)
    np.testing.assert_allclose(result.update, ref, atol=1e-4)
    assert objective(result.update) <= objective(ref) + 1e-6
    assert result.info["iterations"] > 1
    assert sum(result.scores) == pytest.approx(1.0)


def test_geometric_median_downweights_a_far_outlier(kernel_path: str) -> None:
    # the median start (1, 1) is a data point: the Vardi-Zhang step runs on both paths
    X = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [1000, 1000]], np.float32)
    result = make_aggregator("geometric_median:tol=1e-12,max_iter=2000").aggregate(batch_of(X))
    assert result.fates == ["accepted"] * 4 + ["downweighted"]
    # the coordinate-wise median (1, 1) is a data point but not the minimiser:
    # the iteration must leave it (zero gradient norm <= the point's own weight)
    z = result.update.astype(np.float64)
    pull = sum((x - z) / np.linalg.norm(x - z) for x in X.astype(np.float64))
    assert np.linalg.norm(pull) < 1e-3
    assert 0.5 < z[0] < 1.0 and z[0] == pytest.approx(z[1], abs=1e-5)


def test_centered_clipping_matches_its_recursion() -> None:
    batch = random_batch(6, d=7, seed=4, scale=3.0)
    X, w = batch.stacked.astype(np.float64), batch.weights / batch.weights.sum()
    v = np.zeros(7)
    for _ in range(4):
        dist = np.linalg.norm(X - v, axis=1)
        v = v + (w * np.minimum(1, 2.0 / dist)) @ (X - v)
    result = make_aggregator("centered_clipping:tau=2,iterations=4").aggregate(batch)
    np.testing.assert_allclose(result.update, v, rtol=1e-5, atol=1e-5)
    factors = np.minimum(1, 2.0 / np.linalg.norm(X - (result.update - 0), axis=1))
    assert len(result.scores) == 6 and all(0 < s <= 1 for s in result.scores)
    assert "clipped" in result.fates and factors.size == 6


def test_norm_bounding_clips_then_averages() -> None:
    X = np.array([[3, 4], [0, 1], [30, 40]], np.float32)  # norms 5, 1, 50
    result = make_aggregator("norm_bounding:max_norm=5").aggregate(batch_of(X, np.array([1, 1, 2])))
    expected = (np.array([3, 4]) + np.array([0, 1]) + 2 * np.array([3, 4])) / 4
    np.testing.assert_allclose(result.update, expected, rtol=1e-6)
    assert result.fates == ["accepted", "accepted", "clipped"]
    assert result.scores == pytest.approx([5.0, 1.0, 50.0])


def test_fltrust_formula_and_fates() -> None:
    X = np.array([[1, 0], [0, 2], [-1, 0], [2, 2]], np.float32)
    batch = batch_of(X)
    batch = batch.with_root_update(np.array([3, 0], np.float32))
    result = make_aggregator("fltrust").aggregate(batch)
    ts = np.array([1.0, 0.0, 0.0, np.sqrt(0.5)])
    rescaled = X / np.linalg.norm(X, axis=1, keepdims=True) * 3
    np.testing.assert_allclose(result.update, ts @ rescaled / ts.sum(), rtol=1e-6)
    assert result.fates == ["accepted", "rejected:fltrust", "rejected:fltrust", "accepted"]
    assert result.scores == pytest.approx(ts.tolist())


def test_fltrust_needs_a_root_update() -> None:
    with pytest.raises(SettingError, match="no root_update"):
        make_aggregator("fltrust").aggregate(random_batch(3))


def test_fltrust_all_untrusted_gives_zero_update() -> None:
    batch = batch_of(np.array([[-1, 0], [-2, 0]], np.float32))
    batch = batch.with_root_update(np.array([1, 0], np.float32))
    result = make_aggregator("fltrust").aggregate(batch)
    assert result.info["all_untrusted"] is True
    np.testing.assert_array_equal(result.update, [0, 0])


def test_trimmed_mean_marks_outlier_rows_trimmed() -> None:
    X = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], [99, 99, 99]], np.float32)
    result = make_aggregator("trimmed_mean:beta=0.2").aggregate(batch_of(X))
    np.testing.assert_allclose(result.update, [2, 2, 2])
    assert result.fates == ["trimmed", "accepted", "accepted", "accepted", "trimmed"]
    assert result.scores == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_mean_streams_without_stacking() -> None:
    batch = random_batch(5, seed=2)
    make_aggregator("mean").aggregate(batch)
    make_aggregator("norm_bounding").aggregate(batch)
    assert "stacked" not in batch.__dict__  # the cached n x d matrix was never built


def test_krum_handles_colluding_duplicates_exactly() -> None:
    rng = np.random.default_rng(0)
    honest = rng.standard_normal((6, 1000)).astype(np.float32) + 50
    bad = np.repeat(honest.mean(0, keepdims=True) + 5, 3, axis=0)
    from fedsilo.strategies.kernels import gram, sq_distances

    X = np.concatenate([honest, bad])
    D = sq_distances(gram(X), X)
    assert D[6, 7] == 0.0 and D[7, 8] == 0.0


@pytest.mark.parametrize(
    ("spec", "n", "message"),
    [
        ("krum:f=2", 6, "krum: f=2 needs at least 2f\\+3 = 7 updates, got 6"),
        ("multi_krum:f=1", 4, "multi_krum: f=1 needs at least 2f\\+3 = 5 updates, got 4"),
        ("multi_krum:f=1,m=9", 8, "multi_krum: m=9 exceeds the 8 updates"),
        ("bulyan:f=2", 10, "bulyan: f=2 needs at least 4f\\+3 = 11 updates, got 10"),
        ("mean", 0, "mean: needs at least 1 update, got 0"),
    ],
)
def test_impossible_settings_for_n_are_refused(spec: str, n: int, message: str) -> None:
    agg = make_aggregator(spec)
    with pytest.raises(SettingError, match=message):
        agg.validate(n)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("trimmed_mean:beta=0.5", "trimmed_mean: beta must be in \\[0, 0.5\\), got 0.5"),
        ("trimmed_mean:beta=-0.1", "beta must be in"),
        ("krum:f=-1", "krum: f must be >= 0, got -1"),
        ("bulyan:selection=best", "bulyan: selection must be one of iterative, multikrum"),
        ("geometric_median:nu=0", "geometric_median: nu must be > 0"),
        ("centered_clipping:iterations=0", "centered_clipping: iterations must be >= 1"),
        ("norm_bounding:max_norm=-3", "norm_bounding: max_norm must be > 0"),
        ("krum:f=1.5", "parameter 'f' expects int, got '1.5'"),
        ("mean:weighted=maybe", "parameter 'weighted' expects a boolean"),
    ],
)
def test_impossible_parameters_are_refused_at_construction(spec: str, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        make_aggregator(spec)


def test_secure_aggregation_compatibility_flags() -> None:
    from fedsilo.strategies.registry import aggregators

    sum_only = {name for name, cls in aggregators().items() if cls.sum_only}
    assert sum_only == {"mean"}
    # the old spelling still reads (and, set by a plugin, still means) the same
    assert all(cls.needs_individual_updates is not cls.sum_only for cls in aggregators().values())


def test_bulyan_window_ties_resolve_towards_lower_values() -> None:
    from fedsilo.strategies.kernels import closest_to_median_mean

    X = np.array([[0, 0], [1, 5], [2, 6], [3, 7], [4, 100]], np.float32)
    # column 0: 1 and 3 are equally close to the median 2 -> window [1, 2]
    # column 1: median 6, nearest two are 6 and {5, 7} (tie) -> [5, 6]
    np.testing.assert_array_equal(closest_to_median_mean(X, 2), [1.5, 5.5])
    np.testing.assert_array_equal(closest_to_median_mean(X, 3), [2.0, 6.0])

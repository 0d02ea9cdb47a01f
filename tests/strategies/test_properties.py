"""Hypothesis properties of the aggregators."""

from __future__ import annotations

import numpy as np
from data import batch_of
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsilo.strategies import make_aggregator
from fedsilo.strategies.batch import UpdateBatch
from fedsilo.strategies.kernels import gram, krum_scores, sq_distances

FLOATS = st.floats(-100, 100, allow_nan=False, width=32)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def matrices(draw, min_n: int = 1, max_n: int = 9, max_d: int = 6) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    return draw(arrays(np.float32, (n, d), elements=FLOATS))


def unique_scores(X: np.ndarray, f: int) -> bool:
    s = np.sort(krum_scores(sq_distances(gram(X)), f))
    return bool(np.all(np.diff(s) > 1e-3 * (1 + s[1:])))


ORDER_FREE = [
    "mean", "median", "trimmed_mean:beta=0.2", "geometric_median:tol=1e-12,max_iter=5000",
    "centered_clipping:tau=5",
    "norm_bounding:max_norm=50",
]


@SETTINGS
@given(matrices(), st.randoms(use_true_random=False))
def test_permutation_invariance(X: np.ndarray, rnd) -> None:
    perm = list(range(len(X)))
    rnd.shuffle(perm)
    w = np.arange(1, len(X) + 1, dtype=float)
    for spec in ORDER_FREE:
        a = make_aggregator(spec).aggregate(batch_of(X, w)).update
        b = make_aggregator(spec).aggregate(batch_of(X[perm], w[perm])).update
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3, err_msg=spec)


@SETTINGS
@given(matrices(min_n=5), st.randoms(use_true_random=False))
def test_permutation_invariance_of_krum_family_without_score_ties(X: np.ndarray, rnd) -> None:
    assume(unique_scores(X, 1))
    perm = list(range(len(X)))
    rnd.shuffle(perm)
    for spec in ("krum:f=1", "multi_krum:f=1,m=2", "bulyan:f=0,selection=multikrum"):
        a = make_aggregator(spec).aggregate(batch_of(X)).update
        b = make_aggregator(spec).aggregate(batch_of(X[perm])).update
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=spec)


@SETTINGS
@given(arrays(np.float32, st.integers(1, 6), elements=FLOATS), st.integers(1, 9))
def test_equal_inputs_give_that_input(x: np.ndarray, n: int) -> None:
    X = np.repeat(x[None, :], n, axis=0)
    specs = ["mean", "median", "trimmed_mean:beta=0.3", "geometric_median",
             "centered_clipping:tau=1e6,iterations=1", "norm_bounding:max_norm=1e6"]
    if n >= 3:
        specs += ["krum:f=0", "multi_krum:f=0"]
    if n >= 7:
        specs += ["bulyan:f=1"]
    for spec in specs:
        out = make_aggregator(spec).aggregate(batch_of(X, np.arange(1, n + 1))).update
        np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-4, err_msg=spec)
    if np.linalg.norm(x) > 0:
        batch = batch_of(X)
        batch = batch.with_root_update(x)
        np.testing.assert_allclose(make_aggregator("fltrust").aggregate(batch).update, x,
                                   rtol=1e-5, atol=1e-4)


@SETTINGS
@given(matrices())
def test_weighted_mean_with_equal_weights_is_the_mean(X: np.ndarray) -> None:
    out = make_aggregator("mean").aggregate(batch_of(X, np.full(len(X), 7.0))).update
    np.testing.assert_allclose(out, X.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-4)
    plain = make_aggregator("mean:weighted=false").aggregate(batch_of(X, np.arange(len(X)) + 1.0))
    np.testing.assert_allclose(plain.update, X.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-4)


@st.composite
def attacked(draw, f_max: int = 3):
    """Honest rows in [-1, 1] and f arbitrary (possibly huge) malicious rows."""
    f = draw(st.integers(0, f_max))
    h = draw(st.integers(1, 8))
    d = draw(st.integers(1, 5))
    honest = draw(arrays(np.float32, (h, d), elements=st.floats(-1, 1, width=32)))
    bad = draw(arrays(np.float32, (f, d), elements=st.floats(-1e6, 1e6, width=32)))
    return honest, bad


def in_honest_box(out: np.ndarray, honest: np.ndarray) -> bool:
    return bool(np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5))


@SETTINGS
@given(attacked())
def test_coordinate_rules_stay_within_honest_range(data) -> None:
    honest, bad = data
    f, n = len(bad), len(honest) + len(bad)
    X = np.concatenate([honest, bad])
    if f < n / 2:
        assert in_honest_box(make_aggregator("median").aggregate(batch_of(X)).update, honest)
    beta = (f + 0.5) / n
    if beta < 0.5:
        out = make_aggregator(f"trimmed_mean:beta={beta}").aggregate(batch_of(X)).update
        assert in_honest_box(out, honest)
    if n >= 4 * f + 3:
        out = make_aggregator(f"bulyan:f={f}").aggregate(batch_of(X)).update
        assert in_honest_box(out, honest)


@SETTINGS
@given(attacked())
def test_krum_family_picks_honest_rows_against_far_outliers(data) -> None:
    honest, bad = data
    f, n = len(bad), len(honest) + len(bad)
    assume(n >= 2 * f + 3)
    X = np.concatenate([honest, bad + np.float32(1e7)])  # far from every honest row
    for spec in (f"krum:f={f}", f"multi_krum:f={f}"):
        result = make_aggregator(spec).aggregate(batch_of(X))
        assert all(i < len(honest) for i in result.info["selected"]), spec
        assert in_honest_box(result.update, honest), spec


@SETTINGS
@given(attacked())
def test_geometric_median_stays_near_honest_rows(data) -> None:
    honest, bad = data
    f, n = len(bad), len(honest) + len(bad)
    assume(f < n / 2)
    alpha = f / n
    X = np.concatenate([honest, bad])
    z = make_aggregator("geometric_median:tol=1e-9,max_iter=500").aggregate(batch_of(X)).update
    center = honest.astype(np.float64).mean(0)
    radius = np.linalg.norm(honest - center, axis=1).max()
    bound = 2 * (1 - alpha) / (1 - 2 * alpha) * radius
    assert np.linalg.norm(z - center) <= 1.05 * bound + 1e-3


@SETTINGS
@given(matrices(), arrays(np.float32, st.just(1), elements=st.floats(0.125, 10, width=32)))
def test_norm_bounding_and_fltrust_bound_the_norm(X: np.ndarray, bound: np.ndarray) -> None:
    out = make_aggregator(f"norm_bounding:max_norm={bound[0]}").aggregate(batch_of(X)).update
    assert np.linalg.norm(out) <= bound[0] * (1 + 1e-5)
    batch = batch_of(X)
    batch = batch.with_root_update(X[0] if np.linalg.norm(X[0]) > 0 else np.ones(X.shape[1], np.float32))
    out = make_aggregator("fltrust").aggregate(batch).update
    assert np.linalg.norm(out) <= np.linalg.norm(batch.root_update) * (1 + 1e-5)


def _unused(_: UpdateBatch) -> None:  # keep the import for type checkers
    return None

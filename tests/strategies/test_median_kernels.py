"""The generated median kernels, the one-pass Weiszfeld step, and their use in the round."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from data import batch_of
from helpers.messages import message, reply_content

from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.strategies import make_aggregator, pipeline
from fedsilo.strategies import median_kernels as mk
from fedsilo.strategies.fused import sum_and_distances
from fedsilo.strategies.pipeline import batch_from_replies

D = 3 * 2048 + 77  # three spans and a partial one; odd, so threads split unevenly


def _rows(n: int, d: int = D, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, :50] = np.round(x[:, :50])  # ties: many equal values per coordinate
    # read-only views of bytes (as decoded from messages) mixed with writable arrays
    return [np.frombuffer(x[i].tobytes(), np.float32) if i % 2 else x[i] for i in range(n)]


@pytest.mark.parametrize(("n", "staged"), [(1, None), (2, None), (3, None), (4, None),
                                           (7, None), (8, None), (6, True)])
def test_median_pass_is_exact_and_its_sums_match_float64(n: int, staged: bool | None) -> None:
    rows = _rows(n, seed=n)
    x = np.stack(rows)
    ref = np.median(x, axis=0)
    for threads in (1, 2, 3):  # staged: the next span is prefetched (large n's kernel)
        result = mk.median_pass(rows, threads=threads, staged=staged)
        np.testing.assert_array_equal(result.median, ref)  # bit-identical to numpy
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(result.sq_norms, (x64**2).sum(axis=1), rtol=1e-6)
        np.testing.assert_allclose(result.sq_distances, ((x64 - ref) ** 2).sum(axis=1), rtol=1e-6)


def test_median_pass_reports_non_finite_rows_in_their_norm() -> None:
    rows = [r.copy() for r in _rows(5)]
    rows[1][D - 1] = np.nan
    rows[3][10] = np.inf
    norms = mk.median_pass(rows).sq_norms
    assert np.isnan(norms[1]) and np.isposinf(norms[3])
    assert np.isfinite(norms[[0, 2, 4]]).all()


def test_median_pass_refuses_bad_rows() -> None:
    with pytest.raises(ValueError, match="median_pass: no rows"):
        mk.median_pass([])
    with pytest.raises(ValueError, match="1-D float32 vectors of 10 values, got float64"):
        mk.median_pass([np.zeros(10, np.float32), np.zeros(10)])


def test_generated_kernels_are_cached_on_disk(tmp_path) -> None:
    # a fresh process writes the source and numba's compiled code next to it; the
    # next process loads both instead of compiling
    script = (
        "import numpy as np\n"
        "from fedsilo.strategies.median_kernels import median_pass\n"
        "x = np.arange(60, dtype=np.float32).reshape(3, 20)\n"
        "print(median_pass(list(x)).median[:3].tolist())\n"
    )
    env = {"FEDSILO_KERNEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == "[20.0, 21.0, 22.0]"
    sources = list(tmp_path.glob("median_n3_*.py"))
    assert len(sources) == 1 and "do not edit" in sources[0].read_text()
    assert list((tmp_path / "__pycache__").glob("median_n3_*.nbi"))  # numba's index


def test_sum_and_distances_in_one_pass() -> None:
    rows = _rows(6, seed=9)
    x = np.stack(rows).astype(np.float64)
    c = np.array([0.1, 0.3, 0.0, 0.2, 0.25, 0.15])
    for threads in (1, 2):
        z, sq = sum_and_distances(rows, c, threads=threads)
        assert z.dtype == np.float32 and z.shape == (D,)
        np.testing.assert_allclose(z, c @ x, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sq, ((x - z.astype(np.float64)) ** 2).sum(axis=1), rtol=1e-5)
    point = np.ones(D, dtype=np.float32)
    same, sq_to = sum_and_distances(rows, z=point)
    assert same is not None
    np.testing.assert_allclose(sq_to, ((x - 1.0) ** 2).sum(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one of coeffs or z"):
        sum_and_distances(rows, c, z=point)
    with pytest.raises(ValueError, match=f"z must have {D} values"):
        sum_and_distances(rows, z=point[:5])


def test_both_paths_reach_a_stationary_point_and_the_exact_median(kernel_path: str) -> None:
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


def test_screening_computes_the_median_and_recomputes_it_without_rejected_rows(monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "FUSED_MIN_VALUES", 0)
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
    pre = batch.precomputed_median()
    assert pre is not None
    np.testing.assert_array_equal(pre.median, np.median(x[keep], axis=0))
    assert batch.subset([4, 3, 2, 1, 0]).precomputed_median() is pre  # all rows, reordered
    assert batch.subset([0, 1]).precomputed_median() is None
    batch.updates[0] = batch.updates[0].copy()  # a replaced row invalidates it
    assert batch.precomputed_median() is None

"""Quantisation, overflow check, communication graph and config validation."""

import numpy as np
import pytest

from fedsilo.privacy.secagg import (
    SecAggConfig,
    check_no_overflow,
    failure_bound,
    suggest_degree,
)
from fedsilo.privacy.secagg.graph import harary
from fedsilo.privacy.secagg.quantize import dequantize_sum, error_bound, quantize


def test_quantize_levels_and_clipping() -> None:
    rng = np.random.default_rng(0)
    q, clipped = quantize(np.array([-2.0, -1.0, 0.0, 1.0, 3.0]), 1.0, 8, rng)
    assert q.dtype == np.uint32
    assert q[0] == 0 and q[1] == 0 and q[3] == 255 and q[4] == 255
    assert q[2] in (127, 128)
    assert clipped == 2


def test_stochastic_rounding_is_unbiased_and_within_bound() -> None:
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.123456, dtype=np.float64)
    q, _ = quantize(x, 1.0, 4, rng)
    est = dequantize_sum(q, 1, 1.0, 4)
    step = error_bound(1, 1.0, 4)
    assert np.all(np.abs(est - x) < step)
    assert abs(est.mean() - 0.123456) < 0.002  # biased rounding would be off by ~step/2


def test_sum_error_bound_holds_for_many_vectors() -> None:
    rng = np.random.default_rng(2)
    xs = rng.uniform(-0.5, 0.5, size=(50, 1000))
    qs = [quantize(x, 0.5, 10, rng)[0] for x in xs]
    total = np.sum(qs, axis=0, dtype=np.uint32)
    err = np.abs(dequantize_sum(total, 50, 0.5, 10) - xs.sum(axis=0))
    assert err.max() < error_bound(50, 0.5, 10)


def test_overflow_check() -> None:
    check_no_overflow(4096, 20)  # 4096 * (2^20 - 1) < 2^32
    with pytest.raises(ValueError, match=r"4097 sites x \(2\^20 - 1\).*bits <= 19"):
        check_no_overflow(4097, 20)
    with pytest.raises(ValueError, match="wraps the 2\\^32 ring"):
        check_no_overflow(3, 31)


@pytest.mark.parametrize("n,k", [(10, 4), (11, 4), (10, 3), (7, 6), (100, 14), (12, 11)])
def test_harary_is_k_regular_symmetric_and_deterministic(n: int, k: int) -> None:
    ids = [1000 + 17 * i for i in range(n)]
    g = harary(ids, k, "run", 1)
    assert sorted(g) == ids
    assert all(len(set(v)) == k and a not in v for a, v in g.items())
    assert all(a in g[b] for a, v in g.items() for b in v)
    assert g == harary(list(reversed(ids)), k, "run", 1)
    assert g != harary(ids, k, "run", 2) or k == n - 1


def test_harary_rejects_impossible_degree() -> None:
    with pytest.raises(ValueError, match="no 3-regular graph on 7 nodes"):
        harary(list(range(7)), 3, "r", 1)


def test_config_resolve_defaults() -> None:
    assert SecAggConfig().resolve(10) == (8, 5)
    assert SecAggConfig().resolve(100) == (14, 8)
    assert SecAggConfig().resolve(1000) == (20, 11)
    assert SecAggConfig(degree=3).resolve(7) == (4, 3)  # odd degree, odd n: rounded up
    assert SecAggConfig(degree=50).resolve(5) == (4, 3)  # complete graph
    assert SecAggConfig(degree=4, threshold=5).resolve(20) == (4, 5)


@pytest.mark.parametrize("kwargs,msg", [
    ({"degree": 0}, "secagg.degree: expected an int >= 1"),
    ({"threshold": 1}, "secagg.threshold: expected an int >= 2"),
    ({"clip_range": 0.0}, "secagg.clip_range: expected a finite float > 0"),
    ({"clip_range": float("inf")}, "secagg.clip_range"),
    ({"bits": 32}, r"secagg.bits: expected an int in \[1, 31\]"),
    ({"max_weight": -1.0}, "secagg.max_weight"),
])
def test_config_validation_messages(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        SecAggConfig(**kwargs).validate()


def test_resolve_round_keeps_the_sampled_threshold() -> None:
    cfg = SecAggConfig()
    assert cfg.resolve_round(10, 10) == (8, 5)
    assert cfg.resolve_round(10, 7) == (6, 5)  # degree shrinks, threshold does not
    assert cfg.resolve_round(10, 6) == (5, 5)
    with pytest.raises(ValueError, match="only 4 of 10 sites remain, threshold is 5"):
        cfg.resolve_round(10, 4)


def test_minority_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match=r"strict majority of the 5 holders.*\[3, 5\], got 2"):
        SecAggConfig(degree=4, threshold=2).resolve(10)


def test_config_dict_roundtrip() -> None:
    c = SecAggConfig(degree=6, threshold=None, clip_range=0.5, bits=16, max_weight=100.0)
    assert SecAggConfig.from_dict(c.to_dict()) == c


def test_degree_planning() -> None:
    assert failure_bound(1000, 20, 11, 0.3) == 1.0
    assert failure_bound(1000, 100, 51, 0.3) == pytest.approx(0.01294, rel=1e-3)
    assert failure_bound(1000, 20, 11, 0.0) == 0.0
    assert [suggest_degree(1000, p) for p in (0.1, 0.2, 0.3)] == [22, 50, 130]
    assert suggest_degree(10, 0.3) == 9  # only the complete graph
    with pytest.raises(ValueError, match=r"dropout: expected a rate in \[0, 1\), got 1.0"):
        failure_bound(10, 4, 3, 1.0)


def test_quantize_into_out_and_scaled_match_the_plain_call() -> None:
    x = np.random.default_rng(3).uniform(-1.5, 1.5, 20_001)  # > one random block, some clipped
    q, clipped = quantize(x, 1.0, 12, np.random.default_rng(9))
    out = np.full(x.size + 3, 7, dtype=np.uint32)
    q2, c2 = quantize(x, 1.0, 12, np.random.default_rng(9), out=out[1:-2])
    q3, c3 = quantize(x / 4, 1.0, 12, np.random.default_rng(9), factor=4.0)  # exact: x 2^-2
    assert clipped == c2 == c3 == int(np.count_nonzero(np.abs(x) > 1.0))
    assert np.array_equal(q, q2) and np.array_equal(q, q3)
    assert out[0] == 7 and out[-2] == 7 and out[-1] == 7  # wrote exactly the slice
    assert np.array_equal(quantize(x, 1.0, 12, np.random.default_rng(9))[0], q)  # no stale state
    assert q.max() <= 2**12 - 1

"""The attack library (simulations/attacks.py)."""

from __future__ import annotations

import numpy as np
import pytest
from data import random_batch
from scipy.stats import norm

from fedsilo.simulations.attacks import (
    ATTACKS,
    alie_z,
    apply_attack,
    flip_labels,
    is_data_attack,
    min_max_gamma,
)
from fedsilo.strategies import SettingError

MASK = np.array([False, False, False, False, False, True, True])


def honest_of(batch) -> np.ndarray:
    return np.stack(batch.updates)[~MASK].astype(np.float64)


def test_attack_names() -> None:
    assert set(ATTACKS) == {"sign_flip", "gaussian", "scaling", "free_ride", "label_flip", "alie",
                            "ipm", "min_max", "covariate_shift", "label_shift"}
    assert is_data_attack("label_flip") and not is_data_attack("alie")
    assert is_data_attack("covariate_shift") and is_data_attack("label_shift")


def test_free_riders_send_a_zero_delta_or_jitter() -> None:
    batch = random_batch(7, seed=4)
    zero = apply_attack("free_ride", batch, MASK, np.random.default_rng(0))
    jitter = apply_attack("free_ride", batch, MASK, np.random.default_rng(1), jitter=1e-6)
    for i in (5, 6):
        assert not zero.updates[i].any()
        assert 0 < np.abs(jitter.updates[i]).max() < 1e-4
    assert zero.updates[0] is batch.updates[0]


def test_simple_attacks_rewrite_only_malicious_rows() -> None:
    batch = random_batch(7, seed=5)
    rng = np.random.default_rng(0)
    flipped = apply_attack("sign_flip", batch, MASK, rng, scale=2)
    scaled = apply_attack("scaling", batch, MASK, rng)
    noisy = apply_attack("gaussian", batch, MASK, np.random.default_rng(3), sigma=0.5)
    for i in range(7):
        if MASK[i]:
            np.testing.assert_allclose(flipped.updates[i], -2 * batch.updates[i])
            np.testing.assert_allclose(scaled.updates[i], 10 * batch.updates[i])
        else:
            assert flipped.updates[i] is batch.updates[i]
    expected_noise = np.random.default_rng(3).normal(0, 0.5, size=(2, batch.dim)).astype(np.float32)
    np.testing.assert_array_equal(np.stack([noisy.updates[5], noisy.updates[6]]), expected_noise)
    assert flipped.site_ids == batch.site_ids and flipped is not batch


def test_alie_uses_honest_statistics_and_z_max() -> None:
    assert alie_z(20, 4) == pytest.approx(norm.ppf(13 / 20))
    batch = random_batch(7, seed=6)
    out = apply_attack("alie", batch, MASK, np.random.default_rng(0))
    h = honest_of(batch)
    expected = h.mean(0) - alie_z(7, 2) * h.std(0)
    np.testing.assert_allclose(out.updates[5], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.updates[5], out.updates[6])  # colluding: identical


def test_ipm_is_negated_scaled_honest_mean() -> None:
    batch = random_batch(7, seed=7)
    out = apply_attack("ipm", batch, MASK, np.random.default_rng(0), epsilon=0.1)
    np.testing.assert_allclose(out.updates[6], -0.1 * honest_of(batch).mean(0), rtol=1e-5, atol=1e-7)


def test_min_max_sits_on_the_honest_diameter() -> None:
    batch = random_batch(7, seed=8)
    out = apply_attack("min_max", batch, MASK, np.random.default_rng(0))
    h = honest_of(batch)
    diameter = max(np.linalg.norm(a - b) for a in h for b in h)
    reach = np.linalg.norm(h - out.updates[5].astype(np.float64), axis=1).max()
    assert reach == pytest.approx(diameter, rel=1e-4)  # as far as allowed, no farther
    gamma = min_max_gamma(h.astype(np.float32), h.mean(0), -h.std(0))
    np.testing.assert_allclose(out.updates[5], h.mean(0) - gamma * h.std(0), rtol=1e-4, atol=1e-5)


def test_min_max_gamma_equals_the_papers_bisection() -> None:
    rng = np.random.default_rng(2)
    h = rng.standard_normal((6, 20))
    mu, p = h.mean(0), -h.std(0)
    threshold = max(np.linalg.norm(a - b) for a in h for b in h)
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        ok = np.linalg.norm(h - (mu + mid * p), axis=1).max() <= threshold
        lo, hi = (mid, hi) if ok else (lo, mid)
    assert min_max_gamma(h.astype(np.float32), mu, p) == pytest.approx(lo, rel=1e-4)


def test_data_attack_and_empty_mask_leave_the_batch() -> None:
    batch = random_batch(7)
    assert apply_attack("label_flip", batch, MASK, np.random.default_rng(0)) is batch
    assert apply_attack("sign_flip", batch, np.zeros(7, bool), np.random.default_rng(0)) is batch


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: apply_attack("nope", b, MASK, np.random.default_rng(0)), "unknown attack 'nope'; available: sign_flip"),
        (lambda b: apply_attack("ipm", b, MASK, np.random.default_rng(0), eps=1), "ipm: unknown parameter\\(s\\) eps; accepted: epsilon"),
        (lambda b: apply_attack("alie", b, np.ones(7, bool), np.random.default_rng(0)), "alie: needs at least one honest row"),
        (lambda b: apply_attack("ipm", b, MASK[:3], np.random.default_rng(0)), "malicious mask has 3 entries; the batch has 7 rows"),
    ],
)
def test_attack_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(random_batch(7))


def test_flip_labels() -> None:
    y = np.array([0, 1, 9, 4], dtype=np.int64)
    np.testing.assert_array_equal(flip_labels(y, 10), [9, 8, 0, 5])
    assert flip_labels(y, 10).dtype == np.int64
    with pytest.raises(ValueError, match="labels must be in \\[0, 5\\), got \\[0, 9\\]"):
        flip_labels(y, 5)


def test_setting_error_is_a_value_error() -> None:
    assert issubclass(SettingError, ValueError)

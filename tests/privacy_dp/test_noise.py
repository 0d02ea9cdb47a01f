"""Gaussian noise sources: seeded reproducibility and CSPRNG statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsilo.privacy.noise import GaussianNoise

N = 2_000_000


def _check_gaussian(x: np.ndarray, std: float) -> None:
    """Mean, std, 4th moment and 1-sigma mass within 5 standard errors of N(0, std^2)."""
    n = x.size
    x64 = x.astype(np.float64) / std
    assert abs(x64.mean()) < 5 / math.sqrt(n)
    assert abs(x64.std() - 1) < 5 * math.sqrt(1 / (2 * n))  # chi-square spread of the std
    assert abs(np.mean(x64**4) - 3) < 5 * math.sqrt(96 / n)
    inside = np.mean(np.abs(x64) < 1)
    assert abs(inside - 0.682689) < 5 * math.sqrt(0.682689 * 0.317311 / n)


def test_secure_noise_has_right_mean_std_and_shape() -> None:
    noise = GaussianNoise(secure=True)
    x = noise.normal(3.0, N + 1)  # odd size exercises the Box-Muller pairing
    assert x.dtype == np.float32 and x.shape == (N + 1,)
    _check_gaussian(x, 3.0)
    assert noise.name == "chacha20-os.urandom/box-muller"


def test_secure_noise_never_repeats() -> None:
    noise = GaussianNoise(secure=True)
    assert not np.array_equal(noise.normal(1.0, 64), noise.normal(1.0, 64))


def test_seeded_noise_is_reproducible_and_gaussian() -> None:
    a = GaussianNoise(secure=False, seed=7).normal(0.5, N)
    b = GaussianNoise(secure=False, seed=7).normal(0.5, N)
    assert np.array_equal(a, b)
    _check_gaussian(a, 0.5)
    assert GaussianNoise(secure=False, seed=7).name == "numpy.pcg64(seed=7)"


def test_seeded_state_resumes_the_stream() -> None:
    g = GaussianNoise(secure=False, seed=3)
    g.normal(1.0, 10)
    state = g.state_dict()
    expected = g.normal(1.0, 10)
    h = GaussianNoise(secure=False, seed=3)
    h.load_state_dict(state)
    assert np.array_equal(h.normal(1.0, 10), expected)


def test_secure_source_cannot_be_seeded() -> None:
    with pytest.raises(ValueError, match=r"^seed: a secure noise source cannot be seeded"):
        GaussianNoise(secure=True, seed=1)


def test_negative_std_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^std: expected a finite number >= 0, got -1.0$"):
        GaussianNoise(secure=False, seed=0).normal(-1.0, 3)

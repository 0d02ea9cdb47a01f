"""Noise calibration: meets the budget and is minimal; bad budgets are refused."""

from __future__ import annotations

import pytest

from fedsilo.privacy.accounting import ClientLevelAccountant
from fedsilo.privacy.calibrate import calibrate_noise_multiplier

SETTINGS = [
    dict(epsilon=3.0, delta=1e-5, rounds=100, sample_rate=0.1),
    dict(epsilon=1.0, delta=1e-5, rounds=5, sample_rate=0.1, method="pld"),
    dict(epsilon=8.0, delta=1e-5, rounds=20, sample_rate=0.2, sampling="fixed", population=50),
    dict(epsilon=1.0, delta=1e-6, rounds=1, sample_rate=1.0),
]


def _epsilon(z: float, s: dict[str, object]) -> float:
    acct = ClientLevelAccountant(
        noise_multiplier=z,
        sample_rate=s["sample_rate"],  # type: ignore[arg-type]
        delta=s["delta"],  # type: ignore[arg-type]
        sampling=s.get("sampling", "poisson"),  # type: ignore[arg-type]
        population=s.get("population"),  # type: ignore[arg-type]
        method=s.get("method", "rdp"),  # type: ignore[arg-type]
    )
    acct.step(s["rounds"])  # type: ignore[arg-type]
    return acct.get_epsilon()


@pytest.mark.parametrize("setting", SETTINGS)
def test_calibrated_noise_meets_budget_and_is_minimal(setting: dict[str, object]) -> None:
    z = calibrate_noise_multiplier(**setting)  # type: ignore[arg-type]
    target = setting["epsilon"]
    assert _epsilon(z, setting) <= target
    assert _epsilon(z * 0.99, setting) > target
    if setting is SETTINGS[0]:  # a value anyone can check with dp-accounting or Opacus
        assert z == pytest.approx(1.79615, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(epsilon=0.0), r"^epsilon: expected a finite number > 0, got 0.0$"),
        (dict(epsilon=-1.0), r"^epsilon: expected a finite number > 0"),
        (dict(delta=0.0), r"^delta: expected a number strictly between 0 and 1, got 0.0$"),
        (dict(delta=1.5), r"^delta: expected a number strictly between 0 and 1"),
        (dict(rounds=0), r"^rounds: expected an integer >= 1, got 0$"),
        (dict(sample_rate=1.5), r"^sample_rate: expected a number in \(0, 1\]"),
        (dict(epsilon=1e-9, delta=1e-12), r"^epsilon: 1e-09 at delta=1e-12 over 10 rounds cannot"),
    ],
)
def test_bad_budget_is_refused_with_named_option(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = dict(epsilon=1.0, delta=1e-5, rounds=10, sample_rate=0.1)
    with pytest.raises(ValueError, match=message):
        calibrate_noise_multiplier(**{**base, **kwargs})  # type: ignore[arg-type]

"""fedsilo.privacy: update screening, differential privacy and accounting, secure aggregation.

Exports are loaded lazily: the accounting library (dp-accounting, with scipy) is only
imported by code that uses differential privacy, which keeps a ClientApp's start-up
(one process per message in Flower's deployment runtime) light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ClientLevelAccountant": "fedsilo.privacy.accounting",
    "calibrate_noise_multiplier": "fedsilo.privacy.calibrate",
    "ClientLevelDP": "fedsilo.privacy.dp",
    "DPConfig": "fedsilo.privacy.dp",
    "clip_update": "fedsilo.privacy.dp",
    "GaussianNoise": "fedsilo.privacy.noise",
    "SiteBudget": "fedsilo.privacy.site_budget",
    "ScreeningPolicy": "fedsilo.privacy.screening",
    "ScreeningError": "fedsilo.privacy.screening",
    "train_dp_sgd": "fedsilo.privacy.dpsgd",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedsilo.privacy' has no attribute {name!r}")

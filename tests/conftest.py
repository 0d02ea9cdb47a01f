"""Shared test settings: no telemetry, no update checks, no Ray usage stats."""

from __future__ import annotations

import os

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ[_key] = _value

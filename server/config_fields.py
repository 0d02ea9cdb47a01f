"""The values of a run config: its sub-tables and the coercion of TOML / flag values.

`ConfigError` (one line naming the option), the ``[dp]``, ``[record_dp]`` and ``[secagg]``
tables of `fedsilo.server.config.RunConfig`, and the coercion of a raw value to a field's
annotated type. `fedsilo.server.config` re-exports what callers use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedsilo.common.errors import FedsiloError


class ConfigError(FedsiloError, ValueError):
    """A configuration value is missing, malformed or out of range (one line, names the option)."""


@dataclass
class DPSettings:
    """Client-level differential privacy (``[dp]`` table; off unless ``enabled``).

    Fields as in `fedsilo.privacy.dp.DPConfig` (``accountant`` is its ``method``);
    ``secure_noise`` None means: seeded noise in ``fedsilo simulate`` (reproducible),
    a cryptographically secure generator in deployments.
    """

    enabled: bool = False
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    clipping: str = "fixed"
    target_quantile: float = 0.5
    where: str = "server"
    sampling: str = "poisson"
    accountant: str = "rdp"
    secure_noise: bool | None = None
    weighting: str = "uniform"
    weight_cap: float | None = None
    profile_noise_multiplier: float | None = None


@dataclass
class RecordDPSettings:
    """Record-level DP-SGD at each site through Opacus (``[record_dp]`` table).

    epsilon : each site's own target epsilon over the whole run (noise calibrated to it
    when ``noise_multiplier`` is not given); delta : record-level delta; max_grad_norm :
    per-sample gradient clipping norm.
    """

    enabled: bool = False
    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    profile_noise_multiplier: float | None = None


@dataclass
class SecAggSettings:
    """Secure aggregation (``[secagg]`` table; off unless ``enabled``).

    degree : SecAgg+ graph degree (None: 2*ceil(log2 n)); threshold : shares needed to
    reconstruct a secret (None: a strict majority of each site's neighbours);
    clip_range : each coordinate of ``weight / max_weight * update`` is clipped to
    ``[-clip_range, clip_range]`` before quantisation; max_weight : the largest example
    count a site may weigh its update with.
    """

    enabled: bool = False
    degree: int | None = None
    threshold: int | None = None
    clip_range: float = 1.0
    max_weight: float = 1000.0


def build_table(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """A sub-table dataclass ``cls`` from ``data``; unknown keys and wrong types are
    `ConfigError` naming ``prefix`` + the key (``dp.epsilon``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(
                f"config: unknown option {prefix}{key!r}; accepted: {', '.join(sorted(fields))}"
            )
        kwargs[name] = coerce(prefix + name, fields[name].type, value)
    return cls(**kwargs)


def coerce(name: str, annotation: Any, value: Any) -> Any:
    """``value`` as the field's annotated type (bool, int, float, dict, str; optional ones
    accept None); `ConfigError` naming the option otherwise."""
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"config: {name} must not be empty")
    for prefix, convert in _COERCERS:
        if text.startswith(prefix):
            return convert(name, "--" + name.replace("_", "-"), value)
    return value


def _as_bool(name: str, flag: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{flag}: expected true or false, got {value!r}")


def _as_int(name: str, flag: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{flag}: expected an integer, got {value!r}")
    return value


def _as_float(name: str, flag: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{flag}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: expected a number, got {value!r}") from None
    if math.isnan(out):
        raise ConfigError(f"{flag}: expected a number, got NaN")
    return out


def _as_dict(name: str, flag: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"config: [{name}] must be a table, got {value!r}")
    return dict(value)


def _as_str(name: str, flag: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{flag}: expected a string, got {value!r}")
    return value


# annotation prefix -> coercer (``bool`` before ``int``: order as in the annotations' text)
_COERCERS = (("bool", _as_bool), ("int", _as_int), ("float", _as_float), ("dict", _as_dict),
             ("str", _as_str))


def positive_int(flag: str, value: int) -> None:
    """`ConfigError` naming ``flag`` unless ``value >= 1``."""
    if value < 1:
        raise ConfigError(f"{flag}: must be a positive integer, got {value}")



def drop_none(obj: Any) -> Any:
    """``obj`` with None values dropped from its dicts, recursively (TOML has no null)."""
    if isinstance(obj, dict):
        return {k: drop_none(v) for k, v in obj.items() if v is not None}
    return obj

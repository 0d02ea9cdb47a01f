"""The Task interface: what a federation learns, independent of where it runs.

A `Task` gives the initial global model (named arrays), builds each site's `Trainer`
from that site's own data (`SiteData`), names the metrics its evaluation reports and
may ask for federated statistics (`site_statistics`: per-site sums that the server adds
up before round 1 and hands back to every `build_trainer`) and may profile a site's data
for the run's drift check (`data_profile`). Its `TaskIdentity` (name,
version, model layout digest, data schema digest) is sent by every site at the
handshake and recorded in the genesis record; a site whose identity differs from the
server's is refused.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.tasks.trainer import Trainer

Weights = dict[str, np.ndarray]


def _digest(obj: Any) -> str:
    """``sha256:`` over canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layout_digest(weights: Mapping[str, np.ndarray]) -> str:
    """Digest of a model's layout: layer names (in order), shapes and dtypes, not values."""
    return _digest([[str(k), list(np.shape(v)), str(np.asarray(v).dtype)]
                    for k, v in weights.items()])


@dataclass(frozen=True)
class TaskIdentity:
    """What must agree between the server and every site for their updates to mean the same.

    Parameters
    ----------
    name : the task's name (a built-in name or its ``module:object``).
    version : the task's own version string.
    layout_digest : `layout_digest` of the initial model.
    schema_digest : digest of the task's data schema (`Task.schema`).
    """

    name: str
    version: str
    layout_digest: str
    schema_digest: str

    def differences(self, other: TaskIdentity) -> list[str]:
        """One phrase per differing field, e.g. ``"version 1 != 2"`` (self's value first)."""
        return [f"{f.name} {getattr(self, f.name)} != {getattr(other, f.name)}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskIdentity:
        """Build from `to_dict`'s form; ``ValueError`` naming a missing or non-string field."""
        values = {}
        for f in fields(cls):
            value = data.get(f.name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"task identity: {f.name} must be a non-empty string, got {value!r}")
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class SiteData:
    """Where one site's data come from.

    Parameters
    ----------
    site_id : the site's stable id.
    options : simulation: ``partition_id``, ``partition``, ``sites``, ``seed``,
        ``batch_size`` (and ``label_transform``, a simulated data attack's function of the
        labels); deployment: the ``[data]`` table of the site's ``site.toml``.
    base_dir : relative paths in ``options`` are relative to it (None: the working directory).
    seed : the run's seed (local shuffling is derived from it).
    """

    site_id: str
    options: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None
    seed: int = 0

    def path(self, value: str | Path) -> Path:
        """``value`` resolved against `base_dir` (absolute paths unchanged)."""
        p = Path(value)
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p


class Task(ABC):
    """What a federation learns; see the module docstring.

    Subclasses set ``name`` (and ``version``, ``frozen_layers``) and implement
    `initial_weights` and `build_trainer`; the rest has working defaults.
    ``frozen_layers`` names layers that stay as initialised (or as loaded from
    ``init_model``): sites do not send them back and the server does not aggregate them.
    """

    name: str = ""
    version: str = "1"
    frozen_layers: tuple[str, ...] = ()

    @abstractmethod
    def initial_weights(self) -> Weights:
        """The initial global model: layer name -> array (float32), in a fixed order."""

    @abstractmethod
    def build_trainer(self, data: SiteData,
                      statistics: Mapping[str, np.ndarray] | None = None) -> Trainer:
        """The site's `Trainer` on its own data (``statistics``: the federated sums, when
        `site_statistics` returns any). Its ``data_fingerprint()`` and ``num_examples()``
        must not depend on ``statistics``: the site announces them at the handshake,
        before the statistics exist."""

    def schema(self) -> dict[str, Any]:
        """The data schema every site must share (JSON-able); default: none."""
        return {}

    def metric_names(self) -> tuple[str, ...]:
        """What evaluation reports, ``"loss"`` first."""
        return ("loss",)

    def identity(self) -> TaskIdentity:
        return TaskIdentity(name=self.name, version=str(self.version),
                            layout_digest=layout_digest(self.initial_weights()),
                            schema_digest=_digest(self.schema()))

    def site_statistics(self, data: SiteData) -> dict[str, np.ndarray] | None:
        """Per-site sums needed for preprocessing (summed over sites by the server before
        round 1), e.g. ``{"count": [n], "sum": x.sum(0), "sumsq": (x * x).sum(0)}``;
        default None: no statistics round."""
        return None

    def data_profile(self, data: SiteData) -> dict[str, np.ndarray] | None:
        """The site's data profile for the run's drift check (`fedsilo.tasks.profile`:
        row count, per-feature histograms on the task's fixed bins, label counts), computed
        from the rows its Trainer trains on; default None: the task's runs check no drift."""
        return None

    def central_evaluator(self) -> Callable[[Weights], dict[str, float]] | None:
        """Server-side evaluation on a validation set the server holds (None: none).
        The dict holds ``"loss"`` and the task's metrics."""
        return None


def statistics_digest(stats: Mapping[str, np.ndarray]) -> str:
    """Digest of summed statistics: names, dtypes, shapes and values (float64 bytes)."""
    h = hashlib.sha256()
    for name in sorted(stats):
        arr = np.ascontiguousarray(np.asarray(stats[name], dtype=np.float64))
        h.update(f"{name}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()

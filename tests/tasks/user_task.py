"""A user's own Task, as a test module: a tiny torch model on generated data.

Named in run configs as ``user_task:TinyTask`` (a Task subclass), ``user_task:make_task``
(a factory taking the options) or ``user_task:INSTANCE`` (a Task instance); the test
puts this directory on ``sys.path``. Each site generates its own rows from its partition
id and the run seed. ``standardise = true`` makes the task ask for federated statistics
(count, sum, sum of squares per feature) and standardise with them; every statistics
dict a Trainer is built with is appended to `SEEN_STATISTICS`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsilo.tasks import EvalResult, FitResult, SiteData, Task

FEATURES = 3
SEEN_STATISTICS: list[dict[str, np.ndarray]] = []


def site_rows(data: SiteData) -> tuple[np.ndarray, np.ndarray]:
    """The site's rows: 20 + 7 * partition id of them, features on different scales."""
    pid = int(data.options.get("partition_id", 0))
    rng = np.random.default_rng([int(data.seed), pid, 7])
    n = 20 + 7 * pid
    x = rng.normal(loc=[1.0, -2.0, 5.0], scale=[1.0, 3.0, 0.5], size=(n, FEATURES))
    y = (x[:, 0] - 0.3 * x[:, 1] > 1.5).astype(np.int64)
    return x.astype(np.float32), y


def _model(hidden: int) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(OrderedDict(body=nn.Linear(FEATURES, hidden), act=nn.ReLU(),
                                      head=nn.Linear(hidden, 2)))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


class TinyTrainer:
    def __init__(self, x: np.ndarray, y: np.ndarray, hidden: int) -> None:
        self.x, self.y = torch.tensor(x), torch.tensor(y)
        self.model = _model(hidden)
        self._fp = "sha256:" + hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()

    def _load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})

    def _weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> FitResult:
        self._load(weights)
        opt = torch.optim.SGD(self.model.parameters(), lr=float(config.get("lr", 0.1)))
        for _ in range(int(config.get("local_epochs", 1))):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            opt.step()
        return FitResult(self._weights(), len(self.y), {"train_loss": float(loss.item())})

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> EvalResult:
        self._load(weights)
        with torch.no_grad():
            logits = self.model(self.x)
            loss = nn.functional.cross_entropy(logits, self.y).item()
            acc = (logits.argmax(1) == self.y).float().mean().item()
        return EvalResult(float(loss), len(self.y), {"accuracy": float(acc)})

    def data_fingerprint(self) -> str:
        return self._fp

    def num_examples(self) -> int:
        return len(self.y)


class TinyTask(Task):
    name = "tiny"
    version = "1"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        self.hidden = int(options.get("hidden", 4))
        self.standardise = bool(options.get("standardise", False))
        self.frozen_layers = tuple(options.get("frozen", ()))

    def initial_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in _model(self.hidden).state_dict().items()}

    def schema(self) -> dict[str, Any]:
        return {"features": FEATURES, "label": "y", "standardise": self.standardise}

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy")

    def site_statistics(self, data: SiteData) -> dict[str, np.ndarray] | None:
        if not self.standardise:
            return None
        x, _ = site_rows(data)
        x64 = x.astype(np.float64)
        return {"count": np.array([len(x)], dtype=np.float64), "sum": x64.sum(0),
                "sumsq": (x64 * x64).sum(0)}

    def build_trainer(self, data: SiteData,
                      statistics: Mapping[str, np.ndarray] | None = None) -> TinyTrainer:
        x, y = site_rows(data)
        if statistics is not None:
            SEEN_STATISTICS.append({k: np.array(v) for k, v in statistics.items()})
            n = statistics["count"][0]
            mean = statistics["sum"] / n
            std = np.sqrt(np.maximum(statistics["sumsq"] / n - mean**2, 1e-12))
            x_used = ((x - mean) / std).astype(np.float32)
            trainer = TinyTrainer(x_used, y, self.hidden)
            trainer._fp = TinyTrainer(x, y, self.hidden)._fp  # the raw data's fingerprint
            return trainer
        return TinyTrainer(x, y, self.hidden)


def make_task(options: Mapping[str, Any]) -> TinyTask:
    return TinyTask(options)


INSTANCE = TinyTask()
NOT_A_TASK = 42


def returns_dict(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"not": "a task"}

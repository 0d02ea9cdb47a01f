"""`TabularTrainer`: a site's local training and held-out evaluation for the tabular task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsilo.tasks.sgd import PlainSGD
from fedsilo.tasks.tabular.metrics import evaluate_outputs
from fedsilo.tasks.tabular.model import get_weights, loss_fn, make_model, set_weights
from fedsilo.tasks.tabular.schema import TabularSchema
from fedsilo.tasks.tabular.stats import Standardisation
from fedsilo.tasks.trainer import EvalResult, FitResult, Weights


class TabularTrainer:
    """Mini-batch training (SGD or Adam, optional FedProx term) on a site's encoded rows.

    Parameters
    ----------
    schema : the task's schema (kind, model, optimiser).
    x, y, event : the training rows: inputs, training target (class codes, standardised
        regression targets or survival times) and, for survival, the event indicator.
    eval_x, eval_target, eval_event : the held-out rows, with the target in its own
        units (evaluation reports RMSE and MAE in them).
    scale : the standardisation in use (regression: to undo the target's scaling).
    seed : base seed; each round's shuffling draws from (seed, round).
    batch_size : mini-batch size.
    fingerprint : the site's data fingerprint.
    """

    def __init__(self, schema: TabularSchema, x: np.ndarray, y: np.ndarray,
                 event: np.ndarray | None, *, eval_x: np.ndarray, eval_target: np.ndarray,
                 eval_event: np.ndarray | None, scale: Standardisation, seed: int,
                 batch_size: int, fingerprint: str) -> None:
        self.schema, self.scale, self.seed = schema, scale, seed
        self.batch_size, self._fingerprint = batch_size, fingerprint
        self._x, self._y = torch.tensor(x), torch.tensor(y)
        self._event = None if event is None else torch.tensor(event, dtype=torch.float32)
        self._eval_x = torch.tensor(eval_x)
        self.eval_target, self.eval_event = eval_target, eval_event
        self._model: nn.Module | None = None

    def _model_for(self, weights: Weights) -> nn.Module:
        if self._model is None:
            self._model = make_model(self.schema)
        set_weights(self._model, weights)
        return self._model

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult:
        if "record_dp_max_grad_norm" in config:
            raise ValueError("the tabular task does not support record-level DP-SGD yet")
        torch.set_num_threads(1)
        server_round = int(config.get("server_round", 0))
        model = self._model_for(weights)
        model.train()
        lr, mu = float(config.get("lr", 0.1)), float(config.get("proximal_mu", 0.0))
        opt = self._optimizer(model, lr)
        anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
        rng = np.random.default_rng([self.seed, server_round])
        losses: list[float] = []
        for _ in range(int(config.get("local_epochs", 1))):
            order = torch.from_numpy(rng.permutation(len(self._y)))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                opt.zero_grad()
                event = None if self._event is None else self._event[idx]
                loss = loss_fn(self.schema.kind, model(self._x[idx]), self._y[idx], event)
                if mu > 0:  # FedProx: (mu/2) * ||w - w_global||^2
                    params = zip(model.parameters(), anchor, strict=True)
                    loss = loss + 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in params)
                loss.backward()
                opt.step()
                losses.append(float(loss.item()))
        return FitResult(weights=get_weights(model), num_examples=len(self._y),
                         metrics={"train_loss": float(np.mean(losses)) if losses else 0.0})

    def _optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer | PlainSGD:
        decay = self.schema.weight_decay
        if self.schema.optimizer == "adam":  # fresh moments each round: the state stays local
            return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)
        # not torch.optim.SGD, which costs each ClientApp process 1 s: see fedsilo.tasks.sgd
        return PlainSGD(model.parameters(), lr=lr, weight_decay=decay)

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        """Loss and metrics of ``weights`` on the site's held-out rows."""
        model = self._model_for(weights)
        model.eval()
        with torch.no_grad():
            output = model(self._eval_x)
        loss, metrics = evaluate_outputs(self.schema.kind, output, self.eval_target,
                                         self.eval_event, self.scale)
        return EvalResult(loss=loss, num_examples=len(self.eval_target), metrics=metrics)

    def data_fingerprint(self) -> str:
        return self._fingerprint

    def num_examples(self) -> int:
        """The site's training rows: declared at the handshake, reported every round."""
        return len(self._y)

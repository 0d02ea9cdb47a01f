"""`TorchTrainer`: the bundled tasks' implementation of the site `Trainer` protocol (an MLP)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsilo.tasks.models import evaluate_arrays, get_weights, make_mlp, set_weights
from fedsilo.tasks.sgd import PlainSGD
from fedsilo.tasks.trainer import EvalResult, FitResult, Weights


class TorchTrainer:
    """Mini-batch SGD on one site's arrays, with an optional FedProx proximal term.

    Parameters
    ----------
    x, y : the site's local samples and labels.
    num_classes : number of labels (output size of the model).
    seed : base seed; each round's shuffling and dropout draw from (seed, round), so a
        run is reproducible whatever process or order the site runs in.
    batch_size : mini-batch size.
    fingerprint : the site's data fingerprint (computed by the caller from the data and
        its preprocessing).
    eval_x, eval_y : the site's held-out split, which `evaluate` scores (None: the
        training rows, as before held-out splits existed).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        *,
        seed: int,
        batch_size: int = 32,
        fingerprint: str = "",
        eval_x: np.ndarray | None = None,
        eval_y: np.ndarray | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.eval_x, self.eval_y = (x, y) if eval_x is None or eval_y is None else (eval_x, eval_y)
        self._xt, self._yt = torch.tensor(x), torch.tensor(y)  # copies; inputs may be read-only
        self.num_classes = num_classes
        self.seed = seed
        self.batch_size = batch_size
        self._fingerprint = fingerprint
        self._model: nn.Module | None = None
        self._dp_state: dict[str, Any] | None = None  # this site's own DP-SGD accountant
        self._dp_noise: float | None = None  # DP-SGD noise multiplier, calibrated once

    def _model_for(self, weights: Weights) -> nn.Module:
        if self._model is None:
            hidden = int(weights["fc1.weight"].shape[0]) if "fc1.weight" in weights else 64
            self._model = make_mlp(self.x.shape[1], self.num_classes, hidden=hidden)
        set_weights(self._model, weights)
        return self._model

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult:
        torch.set_num_threads(1)
        server_round = int(config.get("server_round", 0))
        model = self._model_for(weights)
        # training mode before either path: `evaluate` (per-site evaluation between rounds)
        # leaves the shared model in eval mode, which Opacus' DP-SGD refuses
        model.train()
        if "record_dp_max_grad_norm" in config:
            return self._fit_dp_sgd(model, config, server_round)
        lr = float(config.get("lr", 0.1))
        epochs = int(config.get("local_epochs", 1))
        mu = float(config.get("proximal_mu", 0.0))
        opt = PlainSGD(model.parameters(), lr=lr)  # not torch.optim: see fedsilo.tasks.sgd
        global_params = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
        rng = np.random.default_rng([self.seed, server_round])
        x, y = self._xt, self._yt
        losses: list[float] = []
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(self.y)))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                if mu > 0:  # FedProx: (mu/2) * ||w - w_global||^2
                    prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
                    loss = loss + 0.5 * mu * prox
                loss.backward()
                opt.step()
                losses.append(float(loss.item()))
        return FitResult(
            weights=get_weights(model),
            num_examples=len(self.y),
            metrics={"train_loss": float(np.mean(losses)) if losses else 0.0},
        )

    def _fit_dp_sgd(self, model: nn.Module, config: Mapping[str, Any], server_round: int) -> FitResult:
        """Record-level DP: DP-SGD through Opacus; the site accounts its own epsilon."""
        from fedsilo.privacy.dpsgd import calibrate_dpsgd_noise, train_dp_sgd

        rounds_total = int(config.get("rounds_total", 1))
        epochs = int(config.get("local_epochs", 1))
        batch_size = min(self.batch_size, len(self.y))
        delta = float(config.get("record_dp_delta", 1e-5))
        target = config.get("record_dp_epsilon")
        z = config.get("record_dp_noise_multiplier")
        # the site's data profile, released with its own noise (`fedsilo.privacy.
        # profile_release.local_release`): one Gaussian over all its rows, composed first
        releases = [(float(r), 1.0, 1) for r in config.get("record_dp_releases") or []]
        state = {"mechanism": "rdp",
                 "history": releases + list((self._dp_state or {}).get("history", []))}
        if z is None and self._dp_noise is None and target is not None:
            # One noise multiplier for the whole run, calibrated once so that the site's
            # budget lasts every round it may take part in.
            batches = -(-len(self.y) // batch_size)
            self._dp_noise = calibrate_dpsgd_noise(
                target_epsilon=float(target), delta=delta, sample_rate=1 / batches,
                steps=epochs * batches * rounds_total, accountant_state=state,
            )
        out = train_dp_sgd(
            model, self.x, self.y, epochs=epochs, lr=float(config.get("lr", 0.1)),
            batch_size=batch_size,
            noise_multiplier=float(z) if z is not None else self._dp_noise,
            target_epsilon=float(target) if target is not None else None,
            delta=delta, max_grad_norm=float(config["record_dp_max_grad_norm"]),
            accountant_state=state, seed=self.seed * 1009 + server_round,
        )
        history = out.accountant_state["history"]
        self._dp_state = {**out.accountant_state, "history": history[len(releases):]}
        return FitResult(weights=get_weights(model), num_examples=len(self.y),
                         metrics={"train_loss": out.loss, "record_epsilon": out.epsilon,
                                  "record_noise_multiplier": out.noise_multiplier})

    def state_dict(self) -> dict[str, Any]:
        """The site's own DP-SGD accounting (`fedsilo.tasks.trainer.KeepsState`)."""
        return {"dp_state": self._dp_state, "dp_noise": self._dp_noise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._dp_state, self._dp_noise = state.get("dp_state"), state.get("dp_noise")

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        model = self._model_for(weights)
        if len(self.eval_y) == 0:  # no held-out rows: nothing to score (loss would be NaN)
            return EvalResult(loss=0.0, num_examples=0, metrics={})
        loss, acc = evaluate_arrays(model, self.eval_x, self.eval_y)
        return EvalResult(loss=loss, num_examples=len(self.eval_y), metrics={"accuracy": acc})

    def data_fingerprint(self) -> str:
        return self._fingerprint

    def num_examples(self) -> int:
        """The site's training examples: declared at the handshake, reported every round."""
        return len(self.y)


def array_fingerprint(x: np.ndarray, y: np.ndarray, preprocessing: Mapping[str, Any]) -> str:
    """Fallback data fingerprint: SHA-256 over the arrays' bytes and the preprocessing."""
    h = hashlib.sha256()
    for arr in (x, y):
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(sorted(preprocessing.items())).encode())
    return "sha256:" + h.hexdigest()

"""The built-in ``torch`` task: your own torch model from one small module, no Task class.

Run config (and the same table in each site's ``site.toml``)::

    task = "torch"
    [task_options]
    module = "digits_cnn.py"     # a .py file, or an importable module ("my_pkg.digits")
    channels = 8                 # every other option goes to make_model(**options)

A relative ``.py`` path is relative to the directory ``fedsilo`` runs in (run config) or
to the ``site.toml`` holding it. The module defines:

``make_model(**options) -> nn.Module``
    the model; called with the options other than the adapter's own (`ADAPTER_KEYS`).
    The initial global model is its state_dict, built under ``torch.manual_seed(seed)``.
``load_site_data(data: SiteData) -> (train, held_out)``
    the site's rows: each an ``(inputs, targets)`` pair of arrays or tensors, or a torch
    map-style ``Dataset`` of ``(input, target)`` items (held in memory). In simulation
    ``data.options`` holds ``partition_id``, ``sites``, ``partition``, ``seed``; in a
    deployment it is the site's ``[data]`` table (relative paths: ``data.path(...)``).
``loss(outputs, targets) -> tensor`` (optional; default cross-entropy)
``metrics(outputs, targets) -> dict[str, float]`` (optional; outputs of the whole
    held-out split; default: accuracy of the arg-max when targets are class indices)
``METRIC_NAMES``, ``VERSION`` (optional): the metric names (for the task description)
    and the module's version (in the task identity, with its name and the options).

Adapter options: ``module``, ``seed`` (initialisation, default 0), ``batch_size``
(default: the run's), ``optimizer`` (``sgd`` or ``adam``), ``weight_decay``.
Learning rate, epochs and FedProx's mu are the run's (``--lr`` ...). Record-level DP-SGD
is refused (a user model's layers are not known to fit Opacus).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsilo.tasks.base import SiteData, Task, Weights
from fedsilo.tasks.sgd import PlainSGD
from fedsilo.tasks.trainer import EvalResult, FitResult

ADAPTER_KEYS = ("module", "seed", "batch_size", "optimizer", "weight_decay")
SITE_SEED_STRIDE = 100_003


def module_path_absolute(options: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``options`` with a relative ``module`` ``.py`` path made absolute against ``base``
    (a process started elsewhere, a Ray worker or a SuperNode's ClientApp, must find it)."""
    out = dict(options)
    module = out.get("module")
    if isinstance(module, str) and module.endswith(".py") and not Path(module).is_absolute():
        out["module"] = str((base / module).resolve())
    return out


def load_user_module(spec: str) -> ModuleType:
    """The module named by ``spec`` (a ``.py`` path or a dotted name); ``ValueError``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"task_options.module: expected a .py file or a module name, got {spec!r}")
    if not spec.endswith(".py"):
        try:
            return importlib.import_module(spec)
        except Exception as exc:  # user code: one line
            raise ValueError(f"task_options.module: cannot import {spec!r} "
                             f"({type(exc).__name__}: {exc})") from None
    path = Path(spec).resolve()
    if not path.is_file():
        raise ValueError(f"task_options.module: {spec}: file not found")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    if loaded is not None:  # a different module holds the name: keep it, load under a key
        name = f"fedsilo_user_{zlib.crc32(str(path).encode()):08x}_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(f"task_options.module: {spec}: failed to import "
                         f"({type(exc).__name__}: {exc})") from None
    return module


class TorchModuleTask(Task):
    """A `Task` built from a user module (see the module docstring)."""

    name = "torch"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        if "module" not in self.options:
            raise ValueError("task_options.module is missing (a .py file or a module name "
                             "defining make_model and load_site_data)")
        self.module = load_user_module(self.options["module"])
        for required in ("make_model", "load_site_data"):
            if not callable(getattr(self.module, required, None)):
                raise ValueError(f"task_options.module: {self.options['module']} defines no "
                                 f"function {required}()")
        spec = str(self.options["module"])
        self.module_name = Path(spec).stem if spec.endswith(".py") else spec
        self.version = str(getattr(self.module, "VERSION", "1"))
        self.model_options = {k: v for k, v in self.options.items() if k not in ADAPTER_KEYS}
        self.seed = int(self.options.get("seed", 0))
        self.optimizer = str(self.options.get("optimizer", "sgd"))
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"task_options.optimizer: expected 'sgd' or 'adam', got "
                             f"{self.optimizer!r}")
        self.weight_decay = float(self.options.get("weight_decay", 0.0))
        self._weights: Weights | None = None

    def make_model(self) -> nn.Module:
        """The user's model, initialised from ``seed`` (the global RNG is left as it was)."""
        state = torch.random.get_rng_state()
        torch.default_generator.manual_seed(self.seed)
        try:
            model = self.module.make_model(**self.model_options)
        except TypeError as exc:  # unknown or missing model options: one line
            raise ValueError(f"task_options: make_model() refused the options "
                             f"{sorted(self.model_options)}: {exc}") from None
        finally:
            torch.random.set_rng_state(state)
        if not isinstance(model, nn.Module):
            raise ValueError(f"task_options.module: make_model() returned "
                             f"{type(model).__name__}, expected a torch.nn.Module")
        return model

    def initial_weights(self) -> Weights:
        if self._weights is None:
            self._weights = _weights_of(self.make_model())
        return {k: v.copy() for k, v in self._weights.items()}

    def schema(self) -> dict[str, Any]:
        """The module's name (not its path: sites keep it where they like) and options."""
        return {"module": self.module_name, "model_options": self.model_options,
                "seed": self.seed}

    def metric_names(self) -> tuple[str, ...]:
        names = getattr(self.module, "METRIC_NAMES", None)
        if names is None:
            names = () if callable(getattr(self.module, "metrics", None)) else ("accuracy",)
        return ("loss", *names)

    def build_trainer(self, data: SiteData,
                      statistics: Mapping[str, np.ndarray] | None = None) -> ModuleTrainer:
        from fedsilo import lineage

        try:
            train, held_out = self.module.load_site_data(data)
            x, y = _tensors(train, "train")
            ex, ey = _tensors(held_out, "held-out")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"load_site_data() for site {data.site_id}: {exc}") from None
        if len(y) == 0:
            raise ValueError(f"load_site_data() for site {data.site_id}: no training examples")
        fingerprint = lineage.data_fingerprint(
            {"x": x.numpy(), "y": y.numpy(), "held_out_x": ex.numpy(), "held_out_y": ey.numpy()},
            preprocessing={"task": "torch", "module": self.module_name,
                           "version": self.version,
                           **dict(data.options.get("provenance") or {})})
        pid = data.options.get("partition_id")
        local = int(pid) if pid is not None else zlib.crc32(data.site_id.encode())
        batch = self.options.get("batch_size") or data.options.get("batch_size") or 32
        return ModuleTrainer(self, x, y, ex, ey, seed=int(data.seed) * SITE_SEED_STRIDE + local,
                             batch_size=int(batch), fingerprint=fingerprint)


class ModuleTrainer:
    """Mini-batch training of the user's model on a site's tensors (optional FedProx)."""

    def __init__(self, task: TorchModuleTask, x: torch.Tensor, y: torch.Tensor,
                 eval_x: torch.Tensor, eval_y: torch.Tensor, *, seed: int, batch_size: int,
                 fingerprint: str) -> None:
        self.task, self.seed, self.batch_size = task, seed, batch_size
        self._x, self._y, self._eval_x, self._eval_y = x, y, eval_x, eval_y
        self._fingerprint = fingerprint
        self._model: nn.Module | None = None
        self._loss: Callable[..., torch.Tensor] = getattr(task.module, "loss",
                                                          nn.functional.cross_entropy)

    def _model_for(self, weights: Weights) -> nn.Module:
        if self._model is None:
            self._model = self.task.make_model()
        state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in weights.items()}
        self._model.load_state_dict(state, strict=True)
        return self._model

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult:
        if "record_dp_max_grad_norm" in config:
            raise ValueError("the torch task does not support record-level DP-SGD")
        torch.set_num_threads(1)
        model = self._model_for(weights)
        model.train()
        lr, mu = float(config.get("lr", 0.1)), float(config.get("proximal_mu", 0.0))
        # SGD without torch.optim, which costs each ClientApp process 1 s: fedsilo.tasks.sgd
        opt_cls = torch.optim.Adam if self.task.optimizer == "adam" else PlainSGD
        opt = opt_cls(model.parameters(), lr=lr, weight_decay=self.task.weight_decay)
        anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
        # each round's order from (seed, round): reproducible in any process or order
        rng = np.random.default_rng([self.seed, int(config.get("server_round", 0))])
        losses: list[float] = []
        for _ in range(int(config.get("local_epochs", 1))):
            order = torch.from_numpy(rng.permutation(len(self._y)))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                opt.zero_grad()
                loss = self._loss(model(self._x[idx]), self._y[idx])
                if mu > 0:  # FedProx: (mu/2) * ||w - w_global||^2
                    params = zip(model.parameters(), anchor, strict=True)
                    loss = loss + 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in params)
                loss.backward()
                opt.step()
                losses.append(float(loss.item()))
        return FitResult(weights=_weights_of(model), num_examples=len(self._y),
                         metrics={"train_loss": float(np.mean(losses)) if losses else 0.0})

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        """Loss and metrics of ``weights`` on the site's held-out split."""
        if len(self._eval_y) == 0:  # nothing held out: nothing to score
            return EvalResult(loss=0.0, num_examples=0, metrics={})
        model = self._model_for(weights)
        model.eval()
        with torch.no_grad():
            out = model(self._eval_x)
            loss = float(self._loss(out, self._eval_y).item())
        metrics_fn = getattr(self.task.module, "metrics", None)
        metrics = dict(metrics_fn(out, self._eval_y)) if callable(metrics_fn) else \
            _accuracy(out, self._eval_y)
        return EvalResult(loss=loss, num_examples=len(self._eval_y),
                          metrics={k: float(v) for k, v in metrics.items()})

    def data_fingerprint(self) -> str:
        return self._fingerprint

    def num_examples(self) -> int:
        """The site's training examples: declared at the handshake, reported every round."""
        return len(self._y)


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if out.ndim == 2 and not torch.is_floating_point(y):
        return {"accuracy": float((out.argmax(1) == y).float().mean().item())}
    return {}


def _tensors(part: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of an ``(x, y)`` pair or a map-style Dataset, as tensors (float32
    inputs; integer targets stay int64 class indices, others become float32)."""
    if isinstance(part, tuple | list) and len(part) == 2:
        x, y = (torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v for v in part)
    elif isinstance(part, torch.utils.data.Dataset) and hasattr(part, "__len__"):
        items = [part[i] for i in range(len(part))]
        if not items:
            return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        x = torch.stack([torch.as_tensor(np.asarray(i[0])) for i in items])
        y = torch.stack([torch.as_tensor(np.asarray(i[1])) for i in items])
    else:
        raise TypeError(f"{what} split: expected (inputs, targets) or a map-style torch Dataset, "
                        f"got {type(part).__name__}")
    if len(x) != len(y):
        raise ValueError(f"{what} split: {len(x)} inputs but {len(y)} targets")
    y = y.long() if not torch.is_floating_point(y) and y.dtype != torch.bool else y.float()
    return x.float().contiguous(), y.contiguous()


def _weights_of(model: nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

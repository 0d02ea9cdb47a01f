"""Evaluation of a tabular model on a site's held-out rows: loss and metrics per kind.

binary: log loss; accuracy, AUROC (scikit-learn). multiclass: cross-entropy; accuracy,
macro-F1 (scikit-learn). regression: MSE; RMSE, MAE, in the target's own units.
survival: negative Cox partial log-likelihood (Breslow) per event; concordance index
(lifelines). A metric that is undefined on the rows at hand (AUROC with one class, a
C-index without a comparable pair) is left out rather than reported as a number.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from fedsilo.tasks.tabular.model import cox_partial_nll
from fedsilo.tasks.tabular.stats import Standardisation


def evaluate_outputs(kind: str, output: torch.Tensor, target: np.ndarray, event: np.ndarray | None,
                     scale: Standardisation) -> tuple[float, dict[str, float]]:
    """(loss, metrics) of the model's ``output`` on rows with the given (unscaled) outcomes."""
    if kind == "binary":
        return _binary(output[:, 0], target)
    if kind == "multiclass":
        return _multiclass(output, target)
    if kind == "regression":
        return _regression(output[:, 0], target, scale)
    if event is None:
        raise ValueError("survival evaluation needs the event indicator")
    return _survival(output[:, 0], target, event)


def _binary(logits: torch.Tensor, y: np.ndarray) -> tuple[float, dict[str, float]]:
    from sklearn.metrics import roc_auc_score

    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(y).float())
    prob = torch.sigmoid(logits).numpy()
    metrics = {"accuracy": float(np.mean((prob >= 0.5) == (y == 1)))}
    if len(np.unique(y)) == 2:
        metrics["auroc"] = float(roc_auc_score(y, prob))
    return float(loss), metrics


def _multiclass(logits: torch.Tensor, y: np.ndarray) -> tuple[float, dict[str, float]]:
    from sklearn.metrics import f1_score

    loss = nn.functional.cross_entropy(logits, torch.as_tensor(y, dtype=torch.int64))
    pred = logits.argmax(dim=1).numpy()
    return float(loss), {"accuracy": float(np.mean(pred == y)),
                         "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0))}


def _regression(out: torch.Tensor, y: np.ndarray,
                scale: Standardisation) -> tuple[float, dict[str, float]]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    pred = out.numpy().astype(np.float64) * scale.target_std + scale.target_mean
    mse = float(mean_squared_error(y, pred))
    return mse, {"rmse": float(np.sqrt(mse)), "mae": float(mean_absolute_error(y, pred))}


def _survival(risk: torch.Tensor, time: np.ndarray,
              event: np.ndarray) -> tuple[float, dict[str, float]]:
    from lifelines.utils import concordance_index

    loss = cox_partial_nll(risk, torch.as_tensor(time, dtype=torch.float32),
                           torch.as_tensor(event, dtype=torch.float32))
    metrics: dict[str, float] = {}
    # no admissible pair (e.g. no event among these rows): ZeroDivisionError, no C-index
    with contextlib.suppress(ZeroDivisionError):
        # lifelines scores "higher = longer survival": a higher risk predicts a shorter one
        metrics["c_index"] = float(concordance_index(time, -risk.numpy(), event))
    return float(loss), metrics

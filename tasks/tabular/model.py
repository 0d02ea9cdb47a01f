"""The tabular task's models (linear or MLP, in torch) and its training loss per kind.

``linear``: one ``nn.Linear`` layer ``out``: logistic regression (binary: one logit),
multinomial logistic regression (multiclass), linear regression, or the linear
predictor of a Cox model (survival: no bias, which the partial likelihood cannot see).
``mlp``: hidden layers ``fc1``, ``fc2``... with ReLU, then ``out``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from fedsilo.tasks.tabular.schema import TabularSchema

Weights = dict[str, np.ndarray]


def make_model(schema: TabularSchema, seed: int | None = None) -> nn.Module:
    """The schema's model, initialised deterministically from ``seed`` (default: the schema's)."""
    gen_state = torch.random.get_rng_state()
    # the CPU generator only: the model is built on the CPU (see tasks.models.make_mlp)
    torch.default_generator.manual_seed(schema.seed if seed is None else seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = schema.num_inputs
    for i, hidden in enumerate(schema.hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, hidden)
        layers[f"act{i}"] = nn.ReLU()
        width = hidden
    layers["out"] = nn.Linear(width, schema.num_outputs, bias=schema.kind != "survival")
    model = nn.Sequential(layers)
    torch.random.set_rng_state(gen_state)
    return model


def get_weights(model: nn.Module) -> Weights:
    """The model's parameters as named float32 numpy arrays (state_dict order)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: Weights) -> None:
    """Load named arrays into ``model`` (names and shapes must match)."""
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in weights.items()},
                          strict=True)


def loss_fn(kind: str, output: torch.Tensor, target: torch.Tensor,
            event: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of ``kind``: a mean over the batch's rows (survival: the Cox
    partial likelihood's event terms summed and divided by the rows, see `cox_partial_nll`)."""
    if kind == "binary":
        return nn.functional.binary_cross_entropy_with_logits(output[:, 0], target.float())
    if kind == "multiclass":
        return nn.functional.cross_entropy(output, target)
    if kind == "regression":
        return nn.functional.mse_loss(output[:, 0], target)
    if event is None:
        raise ValueError("survival loss needs the event indicator")
    # per row, like every other kind: FedAvg weights a site by its rows, so the federation
    # then optimises the sum of every site's partial likelihood, one term per event
    return cox_partial_nll(output[:, 0], target, event, per="row")


def cox_partial_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                    per: str = "event") -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow's handling of ties), per event or per row.

    For each event i: ``risk_i - log(sum over j with time_j >= time_i of exp(risk_j))``.
    Rows are sorted by decreasing time, so each risk set is a prefix and its log-sum-exp a
    running `torch.logcumsumexp`; a tied time takes the value at its last tied row (the
    whole risk set, ties included: Breslow). A batch without events gives 0 (with a
    gradient of 0), so such a batch leaves the model unchanged.

    ``per``: ``"event"`` divides the sum by the events (the usual per-event figure that
    evaluation reports); ``"row"`` divides it by the rows (training). Training must divide
    by rows: FedAvg weights each site by its rows, and with a per-event loss a site's events
    together would weigh as much as its rows (the one event of a site with 100 rows would
    outweigh the 28 events of a site with 50), which on a skewed split cost the federated
    model 0.05 of C-index (BENCHMARKS.md, "Tasks").
    """
    if per not in ("event", "row"):
        raise ValueError(f"per: expected 'event' or 'row', got {per!r}")
    order = torch.argsort(time, descending=True, stable=True)
    risk, time, event = risk[order], time[order], event[order]
    running = torch.logcumsumexp(risk, dim=0)
    # -time is ascending: the last row holding each time is its right insertion point - 1
    last = torch.searchsorted(-time.contiguous(), -time.contiguous(), right=True) - 1
    log_denominator = running[last]
    events = event.sum()
    if float(events) == 0:
        return risk.sum() * 0.0
    return -((risk - log_denominator) * event).sum() / (events if per == "event" else len(event))

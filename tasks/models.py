"""Small torch models for the bundled tabular tasks."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def make_mlp(num_features: int, num_classes: int, hidden: int = 64, seed: int = 0) -> nn.Module:
    """A two-layer MLP, initialised deterministically from ``seed``."""
    gen_state = torch.random.get_rng_state()
    # the CPU generator only (the layers are built on the CPU): `torch.manual_seed` also
    # queues seeding for every lazily initialised accelerator backend, formatting a stack
    # trace for each (about 190 us per model; a site's trainer builds its model once)
    torch.default_generator.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(num_features, hidden),
            act=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        )
    )
    torch.random.set_rng_state(gen_state)
    return model


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as named float32 numpy arrays (state_dict order)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load named numpy arrays into the model (names and shapes must match)."""
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)


def evaluate_arrays(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``x, y``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(x))  # copies: the dataset arrays are read-only
        target = torch.tensor(y)
        loss = nn.functional.cross_entropy(logits, target).item()
        acc = (logits.argmax(dim=1) == target).float().mean().item()
    return float(loss), float(acc)

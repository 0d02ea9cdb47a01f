"""A small CNN on scikit-learn's 8x8 digits images: fedsilo's built-in ``torch`` task.

fedsilo calls three functions (and `loss`, `metrics` when present); the same file runs
in ``fedsilo simulate`` and at a deployed site (``task = "torch"`` in its site.toml).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from fedsilo.tasks import SiteData

VERSION = "1"
METRIC_NAMES = ("accuracy",)


def make_model(channels: int = 8, hidden: int = 32) -> nn.Module:
    """Two 3x3 convolutions (8x8 -> 4x4 after pooling), then a small classifier head."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets)


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"accuracy": float((outputs.argmax(1) == targets).float().mean())}


def load_site_data(data: SiteData) -> tuple[tuple[np.ndarray, np.ndarray],
                                              tuple[np.ndarray, np.ndarray]]:
    """This site's share of the digits images, as (train, held-out) pairs of arrays.

    A site is ``partition_id`` of ``sites``: in simulation fedsilo sets both; in a
    deployment they are the site's ``[data]`` table. A site with files of its own would
    read them here instead (``np.load(data.path(data.options["path"]))``).
    """
    opts = data.options
    pid, sites = int(opts["partition_id"]), int(opts["sites"])
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8), in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # the same shuffle at every site
    rows = np.array_split(order, sites)[pid]
    cut = int(0.8 * len(rows))  # each site holds out 20 % of its own images
    return (x[rows[:cut]], y[rows[:cut]]), (x[rows[cut:]], y[rows[cut:]])

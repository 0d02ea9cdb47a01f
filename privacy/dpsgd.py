"""Record-level DP at a site: DP-SGD through Opacus.

Opacus's ``PrivacyEngine`` does the per-sample gradient clipping (to
``max_grad_norm``), adds Gaussian noise of std ``noise_multiplier * max_grad_norm``
to each summed batch gradient and draws batches by Poisson sampling with rate
``q = 1 / ceil(n / batch_size)``. Each step is a Poisson-subsampled Gaussian over the
site's records; Opacus's RDP accountant composes them. The accountant's history
(``[(noise_multiplier, sample_rate, steps), ...]``) is returned as JSON so the site
keeps counting across federated rounds: every round's local training adds to the same
record-level budget.

Noise comes from a torch generator seeded with ``seed`` (reproducible, not
cryptographically secure): Opacus's secure mode needs ``torchcsprng``, which is not
installed here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from .accounting import check_delta, check_positive


@dataclass(frozen=True)
class DPSGDOutcome:
    """Result of one call to :func:`train_dp_sgd`.

    Attributes:
        loss: mean training loss over the last epoch's non-empty batches.
        epsilon: cumulative record-level epsilon at ``delta`` (all calls so far).
        accountant_state: JSON-able Opacus RDP history to pass to the next call.
        noise_multiplier: the noise multiplier used in this call.
    """

    loss: float
    epsilon: float
    accountant_state: dict[str, Any]
    noise_multiplier: float


def _accountant(state: dict[str, Any] | None) -> RDPAccountant:
    acct = RDPAccountant()
    if state is not None:
        if not isinstance(state, dict) or state.get("mechanism") != "rdp":
            raise ValueError("accountant_state: expected {'mechanism': 'rdp', 'history': [...]}")
        acct.history = [(float(z), float(q), int(s)) for z, q, s in state["history"]]
    return acct


def _epsilon_after(
    history: list[tuple[float, float, int]], z: float, q: float, steps: int, delta: float
) -> float:
    acct = RDPAccountant()
    acct.history = [*history, (z, q, steps)]
    return float(acct.get_epsilon(delta))


def calibrate_dpsgd_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant_state: dict[str, Any] | None = None,
) -> float:
    """Smallest noise multiplier (to 1e-4 relative) keeping the cumulative epsilon in budget.

    Args:
        target_epsilon: cumulative record-level budget including ``accountant_state``.
        delta: delta of the budget.
        sample_rate: Poisson batch sampling rate.
        steps: DP-SGD steps to be taken.
        accountant_state: history of earlier calls (None = fresh).
    """
    history = _accountant(accountant_state).history
    if history and _epsilon_after(history, 1e4, sample_rate, 1, delta) > target_epsilon:
        raise ValueError(
            f"target_epsilon: {target_epsilon} is already spent by earlier training "
            f"(accountant_state)"
        )
    lo, hi = 0.05, 1.0
    while _epsilon_after(history, hi, sample_rate, steps, delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"target_epsilon: {target_epsilon} cannot be met with z <= 1e4")
    while hi / lo > 1 + 1e-4:  # bisection on the accountant; hi always meets the budget
        mid = math.sqrt(lo * hi)
        if _epsilon_after(history, mid, sample_rate, steps, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def train_dp_sgd(
    model: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    noise_multiplier: float | None,
    target_epsilon: float | None,
    delta: float,
    max_grad_norm: float,
    accountant_state: dict[str, Any] | None,
    seed: int,
) -> DPSGDOutcome:
    """Train ``model`` in place with DP-SGD on the site's records.

    Args:
        model: a torch module whose layers Opacus supports (Linear, Conv, ...).
        X: features, shape (n, ...), converted to float32.
        y: integer class labels (cross-entropy loss) or float targets (MSE loss).
        epochs: passes over the data (>= 1).
        lr: SGD learning rate (> 0).
        batch_size: expected Poisson batch size (1..n).
        noise_multiplier: noise std / max_grad_norm; None = calibrate to ``target_epsilon``.
        target_epsilon: cumulative budget (including ``accountant_state``); with a given
            ``noise_multiplier`` it is checked, not calibrated.
        delta: record-level delta, in (0, 1); should be below 1 / n.
        max_grad_norm: per-sample gradient clip norm (> 0).
        accountant_state: state returned by the previous call at this site, or None.
        seed: seeds data order, Poisson sampling and the noise.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2 or len(X) != len(y) or len(X) == 0:
        raise ValueError(f"X, y: expected n >= 1 matching rows, got {X.shape} and {y.shape}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected an integer >= 1, got {epochs!r}")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= len(X)
    ):
        raise ValueError(f"batch_size: expected an integer in [1, {len(X)}], got {batch_size!r}")
    check_positive(lr, "lr")
    check_positive(max_grad_norm, "max_grad_norm")
    delta = check_delta(delta)
    if noise_multiplier is None and target_epsilon is None:
        raise ValueError("noise_multiplier: set it or target_epsilon")
    acct_history = _accountant(accountant_state).history
    torch.manual_seed(seed)
    classify = np.issubdtype(y.dtype, np.integer)
    dataset = TensorDataset(
        torch.as_tensor(X, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.long if classify else torch.float32),
    )
    loader = DataLoader(
        dataset, batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    sample_rate = 1 / len(loader)
    steps = epochs * len(loader)
    if noise_multiplier is None:
        assert target_epsilon is not None
        z = calibrate_dpsgd_noise(
            target_epsilon=check_positive(target_epsilon, "target_epsilon"),
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant_state=accountant_state,
        )
    else:
        z = check_positive(noise_multiplier, "noise_multiplier")
        if target_epsilon is not None:
            eps = _epsilon_after(acct_history, z, sample_rate, steps, delta)
            if eps > target_epsilon:
                raise ValueError(
                    f"noise_multiplier: {z:g} would reach epsilon={eps:.4g} > target_epsilon="
                    f"{target_epsilon:g}"
                )
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(acct_history)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    private_model, private_opt, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=z,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    criterion = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()
    loss_sum, batches = 0.0, 0
    with warnings.catch_warnings():
        # Opacus's hooks trigger torch's "full backward hook ... no inputs require grad".
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            private_model.train()
            for _ in range(epochs):
                loss_sum, batches = 0.0, 0
                for xb, yb in private_loader:
                    private_opt.zero_grad()
                    out = private_model(xb)
                    if not classify:
                        out = out.reshape(yb.shape)
                    # An empty Poisson batch still takes a (noise-only) step, as accounted.
                    loss = criterion(out, yb) if len(xb) else out.sum() * 0.0
                    loss.backward()
                    private_opt.step()
                    if len(xb):
                        loss_sum += float(loss.detach())
                        batches += 1
        finally:
            private_model._close()  # remove Opacus hooks so the model can be trained again
    state = {"mechanism": "rdp", "history": [list(h) for h in engine.accountant.history]}
    return DPSGDOutcome(
        loss=loss_sum / max(batches, 1),
        epsilon=float(engine.accountant.get_epsilon(delta)),
        accountant_state=state,
        noise_multiplier=z,
    )

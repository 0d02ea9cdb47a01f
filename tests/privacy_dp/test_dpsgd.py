"""Record-level DP-SGD through Opacus: reported epsilon equals independent accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from fedsilo.privacy.dpsgd import train_dp_sgd


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _train(model: torch.nn.Module, **kw: object):  # type: ignore[no-untyped-def]
    X, y = _data()
    base: dict[str, object] = dict(
        epochs=2,
        lr=0.5,
        batch_size=32,
        noise_multiplier=1.1,
        target_epsilon=None,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant_state=None,
        seed=0,
    )
    return train_dp_sgd(model, X, y, **{**base, **kw})  # type: ignore[arg-type]


def test_epsilon_equals_opacus_and_dp_accounting_and_keeps_counting() -> None:
    model = _mlp()
    first = _train(model)
    steps, q = 2 * 4, 1 / 4  # 128 records, batch 32 -> 4 batches per epoch
    opacus = RDPAccountant()
    opacus.history = [(1.1, q, steps)]
    assert first.epsilon == pytest.approx(opacus.get_epsilon(1e-5), rel=1e-12)
    direct = RdpAccountant()
    direct.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(1.1)), steps)
    assert first.epsilon == pytest.approx(direct.get_epsilon(1e-5), rel=0.01)
    assert np.isfinite(first.loss) and first.noise_multiplier == 1.1

    second = _train(model, accountant_state=first.accountant_state, seed=1)
    opacus.history = [(1.1, q, 2 * steps)]
    assert second.epsilon == pytest.approx(opacus.get_epsilon(1e-5), rel=1e-12)
    assert second.accountant_state == {"mechanism": "rdp", "history": [[1.1, q, 2 * steps]]}


def test_target_epsilon_is_met() -> None:
    out = _train(_mlp(), noise_multiplier=None, target_epsilon=2.0)
    assert out.epsilon <= 2.0
    assert out.epsilon == pytest.approx(2.0, rel=1e-3)


def test_training_is_reproducible_from_seed() -> None:
    a, b = _mlp(), _mlp()
    _train(a, epochs=1)
    _train(b, epochs=1)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_noise_too_small_for_target_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^noise_multiplier: 0.3 would reach epsilon="):
        _train(_mlp(), noise_multiplier=0.3, target_epsilon=1.0)

"""`PlainSGD` is `torch.optim.SGD` without momentum, bit for bit, with and without
weight decay; a parameter without a gradient is left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsilo.tasks.models import make_mlp
from fedsilo.tasks.sgd import PlainSGD


def _train(ours: bool, weight_decay: float, steps: int = 12) -> list[torch.Tensor]:
    model = make_mlp(16, 4, hidden=8, seed=3)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(96, 16, generator=gen), torch.randint(0, 4, (96,), generator=gen)
    cls = PlainSGD if ours else torch.optim.SGD
    opt = cls(model.parameters(), lr=0.1, weight_decay=weight_decay)
    for i in range(steps):
        idx = slice(8 * i, 8 * i + 8)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_plain_sgd_equals_torch_sgd_bit_for_bit(weight_decay: float) -> None:
    ours, theirs = _train(True, weight_decay), _train(False, weight_decay)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], make_mlp(16, 4, hidden=8, seed=3).fc1.weight)  # it trained


def test_zero_grad_drops_gradients_and_step_skips_parameters_without_one() -> None:
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    p.grad = torch.full((3,), 2.0)
    opt = PlainSGD([p, q], lr=0.5)
    opt.step()
    assert p.tolist() == [0.0, 0.0, 0.0] and q.tolist() == [1.0, 1.0]
    opt.zero_grad()
    assert p.grad is None

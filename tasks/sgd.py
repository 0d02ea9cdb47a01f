"""`PlainSGD`: `torch.optim.SGD` without momentum, to the bit, without ``torch.optim``.

Creating any ``torch.optim`` optimizer imports ``torch._dynamo`` (about 1.1 s of CPU), and
Flower's deployment runtime starts a fresh ClientApp process for every message: every site
paid that second in every round. The bundled trainers' SGD is two lines of arithmetic, so
they do it here; the update is exactly `torch.optim.SGD`'s single-tensor step without
momentum (tests/tasks/test_sgd.py compares them bit for bit). Anything with state (Adam,
momentum) stays with ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class PlainSGD:
    """``p <- p - lr * (grad + weight_decay * p)`` for each parameter with a gradient.

    Parameters
    ----------
    params : the parameters to update (a model's ``parameters()``).
    lr : learning rate.
    weight_decay : L2 penalty folded into the gradient, as `torch.optim.SGD` does.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def zero_grad(self) -> None:
        """Drop the gradients (`torch.optim.Optimizer.zero_grad`'s default)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            p.add_(grad, alpha=-self.lr)

"""Shared fixtures for the SecAgg tests: deterministic inputs, a sum checker, and one
secure exchange on a fresh server session (`run_secagg_round`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.server.secagg_round import SecAggOutcome, SecAggSession, Signer

from .memory_driver import RoundReport


def make_inputs(n: int, d: int, seed: int = 0, first_id: int = 1001,
                max_weight: float = 10.0) -> dict[int, tuple[np.ndarray, float]]:
    """n sites with float32 updates in [-0.09, 0.09] and integer weights in [1, max_weight]."""
    rng = np.random.default_rng(seed)
    return {first_id + 37 * i: (rng.uniform(-0.09, 0.09, d).astype(np.float32),
                                float(rng.integers(1, int(max_weight) + 1)))
            for i in range(n)}


def assert_exact_sum(report: RoundReport, inputs: dict[int, tuple[np.ndarray, float]]) -> None:
    """The recovered sum equals the plain weighted sum over the participants within the bound."""
    assert report.ok, report.reason
    res = report.result
    assert res is not None
    true = np.zeros_like(res.sum_delta)
    for p in res.participants:
        true += inputs[p][1] * inputs[p][0].astype(np.float64)
    assert np.max(np.abs(res.sum_delta - true)) < res.bound
    assert abs(res.total_weight - sum(inputs[p][1] for p in res.participants)) < res.weight_bound


def run_secagg_round(grid: Any, node_ids: list[int], *, train_content: Any, config: SecAggConfig,
                     run_id: str, server_round: int, timeout: float,
                     vector_length: int | None = None, preadvertised: Any = None,
                     announce_next: bool = False, next_nodes: Sequence[int] | None = None,
                     signers: Mapping[int, Signer] | None = None) -> SecAggOutcome:
    """One secure exchange as the server's round runs it (`SecAggSession.exchange`), on a
    session whose ``next_keys`` is ``preadvertised``: what the round before (or the
    handshake) left for this one, or anything a test wants to offer instead."""
    session = SecAggSession(config, run_id, timeout=timeout, vector_length=vector_length)
    session.next_keys = preadvertised
    return session.exchange(grid, node_ids, train_content=train_content,
                            server_round=server_round, announce_next=announce_next,
                            next_nodes=next_nodes, signers=signers)

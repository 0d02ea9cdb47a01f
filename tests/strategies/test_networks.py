"""Comparator networks: sorting and median selection, checked on every 0-1 input.

By the 0-1 principle (Knuth, TAOCP 5.3.4) a comparator network sorts (or selects a
rank) for all inputs if and only if it does for all inputs of zeros and ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.strategies.networks import (
    batcher_sort,
    median_network,
    median_wires,
    selection_network,
)


def _all_binary(n: int) -> np.ndarray:
    """The 2^n inputs of n zeros and ones, one per column (n x 2^n)."""
    codes = np.arange(1 << n, dtype=np.int64)
    return ((codes[None, :] >> np.arange(n)[:, None]) & 1).astype(np.int8)


def _apply(net: np.ndarray | list[tuple[int, int]], values: np.ndarray) -> np.ndarray:
    out = values.copy()
    for a, b in net:  # every comparator over all inputs at once
        lo, hi = np.minimum(out[a], out[b]), np.maximum(out[a], out[b])
        out[a], out[b] = lo, hi
    return out


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16])
def test_batcher_sorts_every_binary_input(size: int) -> None:
    values = _all_binary(size)
    out = _apply(batcher_sort(size), values)
    np.testing.assert_array_equal(out, np.sort(values, axis=0))
    # Batcher's comparator counts: 0, 1, 5, 19, 63
    assert len(batcher_sort(size)) == {1: 0, 2: 1, 4: 5, 8: 19, 16: 63}[size]


@pytest.mark.parametrize("n", range(1, 18))
def test_median_network_selects_the_middle_ranks_of_every_binary_input(n: int) -> None:
    values = _all_binary(n)
    out = _apply(median_network(n), values)
    expected = np.sort(values, axis=0)
    for wire in set(median_wires(n)):
        np.testing.assert_array_equal(out[wire], expected[wire])


def test_pruning_and_sizes() -> None:
    # documented figure (module docstring): 330 comparators for the median of 50
    assert len(median_network(50)) == 330
    assert len(median_network(64)) < len(batcher_sort(64)) == 543
    net = selection_network(10, [0])  # the minimum alone needs only a tournament
    assert len(net) == 9
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 300)).astype(np.float32)
    out = _apply(median_network(100), x)
    lo, hi = median_wires(100)
    np.testing.assert_array_equal((out[lo] + out[hi]) / np.float32(2), np.median(x, axis=0))


def test_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="size must be a power of two, got 12"):
        batcher_sort(12)
    with pytest.raises(ValueError, match=r"wires \[5\] must lie in \[0, 5\)"):
        selection_network(5, [5])

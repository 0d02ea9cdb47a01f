"""What `bench_secagg.py`'s sections share: the vector length, the run's noted figures
(for its targets section), the CPU-time floor of repeated calls and the sites' inputs."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

D = 100_000
RUN_ID = "bench"
SUMMARY: dict[str, list[float]] = {}  # measured ratios / times for the targets section


def note(key: str, value: float) -> None:
    SUMMARY.setdefault(key, []).append(value)


def best(fn: Callable[[], object], repeat: int) -> float:
    """Minimum process CPU time of ``repeat`` calls (all threads: Flower shares in a pool).

    CPU time is used throughout because the machine is shared: wall time measures the
    other jobs as much as this code (wall times are reported alongside where useful).
    """
    times = []
    for _ in range(repeat):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return min(times)


def inputs_for(n: int, d: int = D) -> dict[int, tuple[np.ndarray, float]]:
    rng = np.random.default_rng(n)
    base = rng.uniform(-0.1, 0.1, (min(n, 8), d)).astype(np.float32)
    return {10_000 + i: (base[i % len(base)], float(1 + i % 7)) for i in range(n)}

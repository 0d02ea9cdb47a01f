"""How many CPUs this process may use (shared by the compiled kernels and SecAgg's unmask)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1

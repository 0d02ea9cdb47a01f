"""Which simulated sites exist, which hold which samples, and which are malicious."""

from __future__ import annotations

import numpy as np

from fedsilo.tasks.partition import site_id

__all__ = ["malicious_sites", "site_id"]


def malicious_sites(num_sites: int, num_malicious: int, seed: int) -> list[str]:
    """The (seeded) ids of the malicious sites, sorted."""
    if num_malicious <= 0:
        return []
    rng = np.random.default_rng([seed, 0xBAD])
    chosen = rng.choice(num_sites, size=num_malicious, replace=False)
    return sorted(site_id(int(i)) for i in chosen)

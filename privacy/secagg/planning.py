"""Choosing the graph degree for an expected dropout rate.

A round fails when some site's neighbourhood keeps fewer than t share holders. With
sites dropping independently at rate p (after sharing keys), a surviving site keeps
1 + Binomial(k, 1 - p) holders and a dropped one Binomial(k, 1 - p); a union bound
over all sites gives an upper bound on the failure probability.
"""

from __future__ import annotations

from .config import SecAggConfig


def failure_bound(n: int, degree: int, threshold: int, dropout: float) -> float:
    """Union-bound probability that a round of ``n`` sites with independent dropout rate
    ``dropout`` (0 <= p < 1) at the masked stage cannot be unmasked."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout}")
    from scipy.stats import binom  # lazy: keeps scipy out of the ClientApp's import time
    keep = 1.0 - dropout
    p_survivor = binom.cdf(threshold - 2, degree, keep)  # itself + neighbours < t
    p_dropped = binom.cdf(threshold - 1, degree, keep)
    return float(min(1.0, n * (keep * p_survivor + dropout * p_dropped)))


def suggest_degree(n: int, dropout: float, max_failure: float = 1e-3) -> int:
    """Smallest even degree (with the default majority threshold) whose failure bound is
    at most ``max_failure``; n - 1 (complete graph) if none is."""
    for k in range(2, n, 2):
        kk, t = SecAggConfig(degree=k).resolve(n)
        if failure_bound(n, kk, t, dropout) <= max_failure:
            return kk
    return n - 1

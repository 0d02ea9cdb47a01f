"""Client-level DP for the drift check: the sites' data profiles released once, as a noisy sum.

Contract: under a run's client-level DP (``[dp]``) no site's own data profile is recorded
or compared. The federation's profile is released once, before round 1, by a Gaussian
mechanism over every site, which the run's accountant composes with the rounds
(`fedsilo.privacy.accounting.ClientLevelAccountant.release`, and each site's
`fedsilo.privacy.site_budget.SiteBudget`):

* a site contributes its profile in frequencies (`fedsilo.tasks.profile.frequency_profile`:
  rows 1, every feature's histogram and the label histogram divided by the site's rows).
  Each histogram of frequencies has L2 norm at most 1, so a contribution's norm is at
  most `bound` = ``sqrt(F + 2)`` (``sqrt(F + 1)`` without labels), whatever the data;
  `release` scales a larger one down to it, so a site cannot raise the sensitivity;
* the contributions are summed (in clear at the trusted server, or under SecAgg+, where
  the sites send the same frequencies) and every entry gets Gaussian noise of std
  ``z * bound``; ``z`` is the release's accounted noise multiplier, as a round's is (the
  accountant composes ``GaussianDpEvent(z)``, ``z / 2`` under replace-one neighbours);
* negative noisy counts become 0 (post-processing). The server
  (`fedsilo.server.data_profiles`) sets ``rows`` to the number of sites that contributed
  (public: genesis names them) and ``profile.noise`` to the variance of every entry's
  noise, which the drift check's test adds to the sampling variance
  (`fedsilo.governance.drift`).

Under record-level DP (``[record_dp]``) each site adds the noise itself, before its
profile leaves it (`local_release`): adding or removing one row moves its counts by one
in ``rows``, in one bin of every feature and in one class, an L2 change of the same
`bound`, so the noise std is ``z * bound`` per count and the site's own DP-SGD accountant
composes one Gaussian of multiplier ``z`` (`fedsilo.tasks.torch_trainer`). The server then
sees each site's noisy profile, and the drift check runs per site as without DP.

Utility: the noise std is ``z * bound`` against a signal of (sites x frequency) per bin,
so the federation's profile shows drift only with many sites: at z = 5 and 13 features
(bound 3.9), a 5-point change of one bin's frequency stands 3 std out of the noise from
about 1,200 sites on (3 x 5 x 3.9 / 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

Profile = dict[str, np.ndarray]

def bound(layout: Mapping[str, np.ndarray]) -> float:
    """The L2 norm bound of one contribution of this layout: every array's last axis is a
    histogram of frequencies (norm <= 1), so the bound is the root of their number."""
    return math.sqrt(sum(math.prod(np.shape(v)[:-1]) for v in layout.values()))


def local_release(profile: Mapping[str, np.ndarray], noise_multiplier: float,
                  normal: Callable[[float, int], np.ndarray]) -> tuple[Profile, float]:
    """(a site's profile with Gaussian noise of std ``z * bound`` on every count, negative
    counts set to 0; the noise variance): a record-level release (module docstring)."""
    return release(None, profile, noise_multiplier, normal)


def release(contributions: list[Mapping[str, np.ndarray]] | None,
            secure_sum: Mapping[str, np.ndarray] | None, noise_multiplier: float,
            normal: Callable[[float, int], np.ndarray]) -> tuple[Profile, float]:
    """(the noisy sum, the variance of every entry's noise) of the sites' frequency
    profiles in clear (``contributions``, each scaled down to the bound) or of their
    SecAgg+ sum (``secure_sum``); ``normal(std, size)``: the run's DP noise generator."""
    layout = contributions[0] if contributions is not None else secure_sum
    assert layout is not None
    names = sorted(layout)
    flats = np.stack([np.concatenate([np.ravel(c[k]) for k in names])
                      for c in (contributions if contributions is not None else [layout])])
    limit = bound(layout)
    if contributions is not None:
        norms = np.linalg.norm(flats, axis=1, keepdims=True)
        flats = flats * np.minimum(1.0, limit / np.maximum(norms, 1e-300))
    std = noise_multiplier * limit
    total = np.maximum(flats.sum(axis=0) + normal(std, flats.shape[1]), 0.0)
    ends = np.cumsum([np.size(layout[k]) for k in names])[:-1]
    return ({k: part.reshape(np.shape(layout[k]))
             for k, part in zip(names, np.split(total, ends), strict=True)}, std * std)

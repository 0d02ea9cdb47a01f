"""Each simulated site's own held-out split, carved from the central test split.

A real site evaluates the global model on rows it keeps out of training; a simulated
site gets its share of the dataset's central test split instead, so that its training
rows (and hence the default run's model and digest) stay exactly what they were. The
test rows are dealt out disjointly over the sites, class by class, in proportion to how
many training rows of that class each site holds: a site whose partition is skewed
towards some labels is scored on rows skewed the same way (what "how does the global
model do at this site" means under label skew). Seeded and deterministic: the split
depends only on (the sites' training labels, the test labels, seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def held_out_split(train_labels: Sequence[np.ndarray], test_labels: np.ndarray,
                   seed: int) -> list[np.ndarray]:
    """Disjoint, sorted indices into ``test_labels``, one array per site.

    ``train_labels[i]``: the labels of site ``i``'s training rows. Per class, the test
    rows of that class (shuffled with ``seed``) go to the sites in proportion to their
    training rows of that class (largest remainder; a class no site trains on is spread
    evenly); then every site left without a row takes one from the site with the most,
    while there are rows enough. Every test row goes to exactly one site.
    """
    k = len(train_labels)
    test_labels = np.asarray(test_labels)
    rng = np.random.default_rng([seed, 0x4E1D])
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(test_labels):
        rows = rng.permutation(np.flatnonzero(test_labels == c))
        counts = np.array([np.count_nonzero(np.asarray(y) == c) for y in train_labels], float)
        share = _largest_remainder(len(rows), counts if counts.sum() > 0 else np.ones(k))
        for site, chunk in enumerate(np.split(rows, np.cumsum(share)[:-1])):
            buckets[site].append(chunk)
    parts = [np.concatenate(b) if b else np.zeros(0, np.int64) for b in buckets]
    for site in range(k):
        if len(parts[site]) == 0:
            big = int(np.argmax([len(p) for p in parts]))
            if len(parts[big]) > 1:
                parts[site], parts[big] = parts[big][-1:], parts[big][:-1]
    return [np.sort(p).astype(np.int64) for p in parts]


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split into integers proportional to ``weights`` (summing to ``total``)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    left = total - int(out.sum())
    order = np.argsort(-(exact - out), kind="stable")  # ties: the lower site index first
    out[order[:left]] += 1
    return out

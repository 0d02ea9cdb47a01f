"""The partition at scale: computed once per process, the same result as the per-class
loops it replaced (kept here as the reference), and every site non-empty at 1,000 sites."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsilo.simulations.datasets import load_dataset
from fedsilo.tasks.partition import (
    PartitionSpec,
    bundled_site_data,
    held_out_split,
    partition,
    site_assignment,
)


def _reference_dirichlet(labels, k, alpha, rng):  # the per-class loop before issue 22
    classes = np.unique(labels)
    for _attempt in range(100):
        buckets = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha)))[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                buckets[site].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= 1:
            return parts
    for site in range(k):
        if len(parts[site]) == 0:
            big = int(np.argmax([len(p) for p in parts]))
            parts[site], parts[big] = parts[big][:1], parts[big][1:]
    return parts


def _reference_held_out(train_labels, test_labels, seed):
    from fedsilo.tasks.partition import _largest_remainder

    k = len(train_labels)
    rng = np.random.default_rng([seed, 0x4E1D])
    buckets = [[] for _ in range(k)]
    for c in np.unique(test_labels):
        rows = rng.permutation(np.flatnonzero(test_labels == c))
        counts = np.array([np.count_nonzero(np.asarray(y) == c) for y in train_labels], float)
        share = _largest_remainder(len(rows), counts if counts.sum() > 0 else np.ones(k))
        for site, chunk in enumerate(np.split(rows, np.cumsum(share)[:-1])):
            buckets[site].append(chunk)
    parts = [np.concatenate(b) for b in buckets]
    for site in range(k):
        if len(parts[site]) == 0:
            big = int(np.argmax([len(p) for p in parts]))
            if len(parts[big]) > 1:
                parts[site], parts[big] = parts[big][-1:], parts[big][:-1]
    return [np.sort(p).astype(np.int64) for p in parts]


@pytest.mark.parametrize("sites", [1, 10, 200, 1000])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 5.0])
def test_dirichlet_equals_the_per_class_reference(sites: int, alpha: float) -> None:
    ds = load_dataset("digits")
    got = partition(ds.y_train, sites, PartitionSpec("dirichlet", alpha), seed=7)
    rng = np.random.default_rng([7, 0x5EED])
    want = [np.sort(p) for p in _reference_dirichlet(ds.y_train, sites, alpha, rng)]
    assert len(got) == sites
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert min(len(p) for p in got) >= 1  # 1,000 sites over 1,437 rows: the fix-up applies
    held = held_out_split([ds.y_train[p] for p in got], ds.y_test, 7)
    ref = _reference_held_out([ds.y_train[p] for p in got], ds.y_test, 7)
    assert all(np.array_equal(a, b) for a, b in zip(held, ref, strict=True))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "shards:1"])
def test_site_data_slices_one_cached_assignment(spec: str) -> None:
    fed = {"task": "digits", "task_options": json.dumps({"partition": spec}), "sites": 1000,
           "seed": 3, "batch_size": 32, "data": ""}
    site_assignment.cache_clear()
    first = bundled_site_data(fed, 0)
    for pid in (1, 500, 999):
        bundled_site_data(fed, pid)
    info = site_assignment.cache_info()
    assert (info.misses, info.hits) == (1, 3)  # the whole split once, then slices of it
    ds = load_dataset("digits", seed=3)  # the task's data seed: the run's seed
    parts = partition(ds.y_train, 1000, PartitionSpec.parse(spec), 3)
    assert np.array_equal(first.options["indices"], parts[0])
    held = held_out_split([ds.y_train[p] for p in parts], ds.y_test, 3)
    assert np.array_equal(first.options["held_out_indices"], held[0])
    first.options["indices"][:] = 0  # a site's own copy: the shared assignment is read-only
    assert np.array_equal(bundled_site_data(fed, 0).options["indices"], parts[0])

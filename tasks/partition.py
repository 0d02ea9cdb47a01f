"""Seeded partitions of a bundled dataset over sites: the demo sites' data loader.

A bundled task (`fedsilo.tasks.bundled`) has no site files: a demo or simulated site holds
a seeded share of the dataset's training split (`partition`, by `PartitionSpec`: iid,
Dirichlet label skew, shards) and a share of its central test split as its held-out rows
(`held_out_split`). `bundled_site_data` gives site ``partition_id`` its `SiteData` from
the federation record the server sends; it is used by simulations
(`fedsilo.simulations.sites`) and by SuperNodes started with a ``partition-id`` node
config (`fedsilo.client.flower_app`), so both build the very same site.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fedsilo.common.errors import FedsiloError
from fedsilo.tasks.base import SiteData


class PartitionError(FedsiloError, ValueError):
    """A partition spec is malformed or cannot be satisfied."""


@dataclass(frozen=True)
class PartitionSpec:
    """How samples are distributed: ``iid``, ``dirichlet:ALPHA``, ``shards:K`` or ``column:NAME``.

    Parameters
    ----------
    kind : ``"iid"``, ``"dirichlet"`` (label skew, smaller alpha = more skew),
        ``"shards"`` (sort by label, cut into shards, give each site K of them) or
        ``"column"`` (a user's file whose column NAME names each row's site: the natural
        partition of cross-silo data; `fedsilo.simulations.user_data` applies it).
    value : alpha for dirichlet, K for shards, unused for iid and column.
    column : the column's name (column only).
    """

    kind: str
    value: float = 0.0
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        accepted = ("accepted: iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1), "
                    "column:NAME (a column of task_options.data naming each row's site)")
        head, _, tail = str(text).strip().partition(":")
        try:
            if head == "iid" and not tail:
                return cls("iid")
            if head == "column" and tail.strip():
                return cls("column", column=tail.strip())
            if head == "dirichlet" and tail and float(tail) > 0 and np.isfinite(float(tail)):
                return cls("dirichlet", float(tail))
            if head == "shards" and tail and int(tail) >= 1 and int(tail) == float(tail):
                return cls("shards", int(tail))
        except ValueError:
            pass
        raise PartitionError(f"invalid partition {text!r}; {accepted}")

    def __str__(self) -> str:
        if self.kind == "iid":
            return "iid"
        if self.kind == "column":
            return f"column:{self.column}"
        value = int(self.value) if self.kind == "shards" else self.value
        return f"{self.kind}:{value}"


def partition(labels: np.ndarray, num_sites: int, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    """Split sample indices over ``num_sites`` sites; every site gets at least one sample.

    The result depends only on (labels, num_sites, spec, seed).
    """
    if spec.kind == "column":
        raise PartitionError(f"{spec} splits a data file by its column (task_options.data); "
                             "this task's data has no such column: use iid, dirichlet:ALPHA or "
                             "shards:K")
    n = len(labels)
    if num_sites < 1:
        raise PartitionError(f"sites must be >= 1, got {num_sites}")
    if num_sites > n:
        raise PartitionError(f"sites ({num_sites}) exceeds the {n} training samples")
    rng = np.random.default_rng([seed, 0x5EED])
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_sites)
    elif spec.kind == "dirichlet":
        parts = _dirichlet(labels, num_sites, spec.value, rng)
    else:
        parts = _shards(labels, num_sites, int(spec.value), rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, split its samples over sites in Dirichlet(alpha) proportions.

    Redraws (seeded) until every site holds at least one sample, then as a last
    resort moves one sample from the largest site to each empty one. Each draw is
    whole-array numpy (one site label per sample, one stable sort), so the up to 100
    redraws cost milliseconds even at 1,000 sites; the draws, and so the result, are
    those of the per-class split it replaces.
    """
    classes = np.unique(labels)
    for _attempt in range(100):
        rows, owner = [], []
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha)))[:-1] * len(idx)).astype(int)
            # the site of each of the class's rows: chunk i of np.split(idx, cuts) is site i's
            sizes = np.diff(np.concatenate(([0], np.minimum(cuts, len(idx)), [len(idx)])))
            rows.append(idx)
            owner.append(np.repeat(np.arange(k), np.maximum(sizes, 0)))
        counts = np.bincount(np.concatenate(owner), minlength=k)
        if counts.min() >= 1:
            break
    # a site's rows in class order, each class's rows in drawn order (what the empty-site
    # fix below moves depends on it); stable sort keeps that order within a site
    order = np.argsort(np.concatenate(owner), kind="stable")
    parts = np.split(np.concatenate(rows)[order], np.cumsum(counts)[:-1])
    if counts.min() >= 1:
        return parts
    for site in range(k):  # in site order, as before: the result depends on it
        if counts[site] > 0:
            continue
        big = int(np.argmax(counts))
        parts[site], parts[big] = parts[big][:1], parts[big][1:]
        counts[site], counts[big] = 1, counts[big] - 1
    return parts


def _shards(labels: np.ndarray, k: int, per_site: int, rng: np.random.Generator) -> list[np.ndarray]:
    num_shards = k * per_site
    if num_shards > len(labels):
        raise PartitionError(
            f"shards:{per_site} with {k} sites needs {num_shards} shards but there are only "
            f"{len(labels)} samples"
        )
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(k, per_site)
    return [np.concatenate([shards[s] for s in row]) for row in assignment]

# ------------------------------------------------------------ held-out splits
# Each simulated site's own held-out split, carved from the central test split.
#
# A real site evaluates the global model on rows it keeps out of training; a simulated
# site gets its share of the dataset's central test split instead, so that its training
# rows (and hence the default run's model and digest) stay exactly what they were. The
# test rows are dealt out disjointly over the sites, class by class, in proportion to how
# many training rows of that class each site holds: a site whose partition is skewed
# towards some labels is scored on rows skewed the same way (what "how does the global
# model do at this site" means under label skew). Seeded and deterministic: the split
# depends only on (the sites' training labels, the test labels, seed).


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
    # whole arrays: each training row's site, then per class every site's count at once
    site_of = np.repeat(np.arange(k), [len(y) for y in train_labels])
    train_all = (np.concatenate([np.asarray(y) for y in train_labels]) if k
                 else np.zeros(0, test_labels.dtype))
    rows_all, owner = [], []
    for c in np.unique(test_labels):
        rows = rng.permutation(np.flatnonzero(test_labels == c))
        counts = np.bincount(site_of[train_all == c], minlength=k).astype(float)
        share = _largest_remainder(len(rows), counts if counts.sum() > 0 else np.ones(k))
        rows_all.append(rows)
        owner.append(np.repeat(np.arange(k), share))
    # a site's rows in class order, each class's in drawn order (the fix below takes the
    # last one): a stable sort by site keeps that order
    owner_all = np.concatenate(owner) if owner else np.zeros(0, np.int64)
    sizes = np.bincount(owner_all, minlength=k)
    order = np.argsort(owner_all, kind="stable")
    flat = np.concatenate(rows_all)[order] if rows_all else np.zeros(0, np.int64)
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    for site in range(k):
        if sizes[site] == 0:
            big = int(np.argmax(sizes))
            if sizes[big] > 1:
                parts[site], parts[big] = parts[big][-1:], parts[big][:-1]
                sizes[site], sizes[big] = 1, sizes[big] - 1
    return [np.sort(p).astype(np.int64) for p in parts]


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split into integers proportional to ``weights`` (summing to ``total``)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    left = total - int(out.sum())
    order = np.argsort(-(exact - out), kind="stable")  # ties: the lower site index first
    out[order[:left]] += 1
    return out


def site_id(partition_id: int) -> str:
    """Stable id of the (simulated or demo) site holding partition ``partition_id``."""
    return f"site-{partition_id:03d}"


@lru_cache(maxsize=4)
def site_assignment(task: str, data_seed: int, sites: int, spec: str,
                    seed: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Every site's rows of bundled dataset ``task``: (training rows, held-out test rows),
    one array per partition id, computed once per process and run.

    ``data_seed`` seeds the dataset's train/test split, ``spec`` is the `PartitionSpec`
    text, ``seed`` the partition's seed. A site build slices its share of this (cached)
    assignment instead of re-partitioning the whole population: at 1,000 sites the
    handshake builds every site, so a per-site partition would cost the whole split 1,000
    times. The held-out split deals the central test rows out like each site's training
    labels (its training rows, and so the model, are unchanged). The arrays are shared
    between builds: read-only.
    """
    from fedsilo.tasks.datasets import load_dataset

    ds = load_dataset(task, seed=data_seed)
    parts = partition(ds.y_train, sites, PartitionSpec.parse(spec), seed)
    held_out = held_out_split([ds.y_train[p] for p in parts], ds.y_test, seed)
    for arr in (*parts, *held_out):
        arr.setflags(write=False)
    return tuple(parts), tuple(held_out)


def bundled_site_data(fed: Mapping[str, Any], pid: int) -> SiteData:
    """The `SiteData` of partition ``pid`` of the federation record ``fed``.

    ``fed``: the federation settings the server sends (``task``, ``task_options`` as a
    JSON string, whose ``partition`` is a bundled task's demo split, ``sites``,
    ``partition`` (the record's own split, used when ``task_options`` names none),
    ``seed``, ``batch_size``, ``data`` as a JSON string or empty). `SiteData.options`: ``partition_id``, ``partition``, ``sites``,
    ``seed``, ``batch_size``, ``data``; for a bundled task also ``indices`` (its rows of
    the training split), ``held_out_indices`` (its rows of the test split) and
    ``provenance`` (the partition, for the data fingerprint).
    """
    from fedsilo.tasks.bundled import DEFAULT_PARTITION
    from fedsilo.tasks.datasets import DATASETS

    seed = int(fed["seed"])
    task_options = json.loads(fed.get("task_options") or "{}")
    # a bundled task's demo split is its own option ([task_options] partition); a record
    # without it (older servers, user-data simulations) names it at top level
    split = str(task_options.get("partition") or fed.get("partition") or DEFAULT_PARTITION)
    options: dict[str, Any] = {
        "partition_id": pid, "partition": split, "sites": int(fed["sites"]),
        "seed": seed, "batch_size": int(fed.get("batch_size") or 32),
        "data": json.loads(fed["data"]) if fed.get("data") else {},
    }
    task = str(fed["task"])
    if task in DATASETS:
        spec = PartitionSpec.parse(split)
        options_seed = task_options.get("seed", seed)
        parts, held_out = site_assignment(task, int(options_seed), int(fed["sites"]),
                                          str(spec), seed)
        options["indices"] = parts[pid].copy()
        options["held_out_indices"] = held_out[pid].copy()
        options["provenance"] = {"partition": str(spec), "partition_seed": seed,
                                 "partition_id": pid}
    return SiteData(site_id=site_id(pid), options=options, seed=seed)

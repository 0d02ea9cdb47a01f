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
    resort moves one sample from the largest site to each empty one.
    """
    classes = np.unique(labels)
    for _attempt in range(100):
        buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
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


def site_id(partition_id: int) -> str:
    """Stable id of the (simulated or demo) site holding partition ``partition_id``."""
    return f"site-{partition_id:03d}"


def bundled_site_data(fed: Mapping[str, Any], pid: int) -> SiteData:
    """The `SiteData` of partition ``pid`` of the federation record ``fed``.

    ``fed``: the federation settings the server sends (``task``, ``task_options`` as a
    JSON string, ``sites``, ``partition``, ``seed``, ``batch_size``, ``data`` as a JSON
    string or empty). `SiteData.options`: ``partition_id``, ``partition``, ``sites``,
    ``seed``, ``batch_size``, ``data``; for a bundled task also ``indices`` (its rows of
    the training split), ``held_out_indices`` (its rows of the test split) and
    ``provenance`` (the partition, for the data fingerprint).
    """
    from fedsilo.tasks.datasets import DATASETS, load_dataset

    seed = int(fed["seed"])
    options: dict[str, Any] = {
        "partition_id": pid, "partition": str(fed["partition"]), "sites": int(fed["sites"]),
        "seed": seed, "batch_size": int(fed.get("batch_size") or 32),
        "data": json.loads(fed["data"]) if fed.get("data") else {},
    }
    task = str(fed["task"])
    if task in DATASETS:
        spec = PartitionSpec.parse(str(fed["partition"]))
        options_seed = json.loads(fed.get("task_options") or "{}").get("seed", seed)
        ds = load_dataset(task, seed=int(options_seed))
        parts = partition(ds.y_train, int(fed["sites"]), spec, seed)
        options["indices"] = parts[pid]
        # the site's own held-out split: its share of the central test rows, dealt out like
        # its training labels (its training rows, and so the model, are unchanged)
        options["held_out_indices"] = held_out_split([ds.y_train[p] for p in parts],
                                                     ds.y_test, seed)[pid]
        options["provenance"] = {"partition": str(spec), "partition_seed": seed,
                                 "partition_id": pid}
    return SiteData(site_id=site_id(pid), options=options, seed=seed)

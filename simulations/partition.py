"""Seeded partitioners that split a dataset's samples over simulated sites."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class PartitionError(ValueError):
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

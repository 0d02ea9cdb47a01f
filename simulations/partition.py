"""Seeded partitioners that split a dataset's samples over simulated sites.

They live in `fedsilo.tasks.partition` (a bundled task's demo sites load their share
with them in deployments too); re-exported here for simulations and older imports.
"""

from __future__ import annotations

from fedsilo.tasks.partition import PartitionError, PartitionSpec, _dirichlet, _shards, partition

__all__ = ["PartitionError", "PartitionSpec", "_dirichlet", "_shards", "partition"]

"""Simulated sites: each virtual node builds its own data and identity from its partition id.

In simulation (and in the example Flower App), a node knows only its
``partition-id``; the server sends the federation's task and data settings with every
message and each node builds its Trainer through the task (`Task.build_trainer`) from
its `SiteData`, as a real site would from its own files. Sites are cached per process
(`SITE_CACHE`); the partition they slice is computed once per process and run.

`SiteData.options` of a simulated site: ``partition_id``, ``partition``, ``sites``,
``seed``, ``batch_size`` and ``data`` (the federation's data settings, a dict; empty
unless set); for a bundled task also ``indices`` (its rows of the training split),
``held_out_indices`` (its rows of the test split, `fedsilo.tasks.partition`) and
``provenance`` (the partition, for the data fingerprint); a label-flipping attacker gets
``label_transform``, a data-shift attacker (``data_shift``: covariate or label shift) the
option of `fedsilo.simulations.attacks.DATA_SHIFTS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from flwr.app import Context

from fedsilo.client.app import Site
from fedsilo.client.flower_app import federation_key, federation_site
from fedsilo.simulations.user_data import site_data as user_site_data
from fedsilo.simulations.user_data import uses_user_data
from fedsilo.tasks import SiteData
from fedsilo.tasks.partition import bundled_site_data


def simulated_site(context: Context, federation: Mapping[str, Any]) -> Site:
    """The `SiteFactory` of simulated federations (uses ``node_config['partition-id']``)."""
    pid, frozen = federation_key(context, federation)
    return _build_site(frozen, pid)


def site_data(fed: Mapping[str, Any], pid: int) -> SiteData:
    """The `SiteData` of partition ``pid`` (see the module docstring)."""
    if uses_user_data(str(fed["task"]), json.loads(fed.get("task_options") or "{}")):
        return user_site_data(fed, pid)  # a user's files: `fedsilo.simulations.user_data`
    data = bundled_site_data(fed, pid)  # a bundled task's share, as demo sites load it
    if data.site_id in (fed.get("label_flip_sites") or "").split(","):
        from fedsilo.simulations.attacks import flip_labels

        data.options["label_transform"] = flip_labels
        data.options["provenance"] = {**data.options.get("provenance", {}), "label_flip": True}
    shift = fed.get("data_shift") or ""
    if shift and data.site_id in (fed.get("data_shift_sites") or "").split(","):
        from fedsilo.simulations.attacks import DATA_SHIFTS

        option, transform = DATA_SHIFTS[shift]
        data.options[option] = transform
        data.options["provenance"] = {**data.options.get("provenance", {}), shift: True}
    return data


SITE_CACHE = 1024
"""Sites kept built per worker process. The handshake builds every site once; a 1,000-site
federation's sites (tens of KB each for a bundled task) stay built, so a sampled site is
never rebuilt in a later round. Each build slices the run's partition, computed once per
process (`fedsilo.tasks.partition.site_assignment`)."""


@lru_cache(maxsize=SITE_CACHE)
def _build_site(federation_json: str, pid: int) -> Site:
    fed = json.loads(federation_json)
    return federation_site(fed, site_data(fed, pid))

"""Simulated sites: each virtual node builds its own data and identity from its partition id.

In simulation (and in the example Flower App), a node knows only its
``partition-id``; the server sends the federation's task and data settings with every
message and each node builds its Trainer through the task (`Task.build_trainer`) from
its `SiteData`, as a real site would from its own files. Sites are cached per process.

`SiteData.options` of a simulated site: ``partition_id``, ``partition``, ``sites``,
``seed``, ``batch_size`` and ``data`` (the federation's data settings, a dict; empty
unless set); for a bundled task also ``indices`` (its rows of the training split),
``held_out_indices`` (its rows of the test split, `fedsilo.simulations.holdout`) and
``provenance`` (the partition, for the data fingerprint); a label-flipping attacker gets
``label_transform``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context

from fedsilo import lineage
from fedsilo.client.app import Site
from fedsilo.client.policy import SitePolicy
from fedsilo.client.task_site import task_site
from fedsilo.simulations.holdout import held_out_split
from fedsilo.simulations.partition import PartitionSpec, partition
from fedsilo.simulations.scenario import site_id
from fedsilo.simulations.user_data import site_data as user_site_data
from fedsilo.simulations.user_data import uses_user_data
from fedsilo.tasks import SiteData, resolve_task
from fedsilo.tasks.datasets import DATASETS, load_dataset

FEDERATION_KEYS = ("task", "task_options", "data", "sites", "partition", "seed", "batch_size",
                   "sim_run_dir", "run_id", "label_flip_sites", "site_max_epsilon")


def simulated_site(context: Context, federation: Mapping[str, Any]) -> Site:
    """The `SiteFactory` of simulated federations (uses ``node_config['partition-id']``)."""
    pid = int(context.node_config["partition-id"])
    fed = {k: federation.get(k) for k in FEDERATION_KEYS}
    if fed["task"] is None and federation.get("dataset"):  # federations sent before tasks
        fed["task"] = federation["dataset"]
    frozen = json.dumps(fed, sort_keys=True, default=str)
    return _build_site(frozen, pid)


def site_data(fed: Mapping[str, Any], pid: int) -> SiteData:
    """The `SiteData` of partition ``pid`` (see the module docstring)."""
    if uses_user_data(str(fed["task"]), json.loads(fed.get("task_options") or "{}")):
        return user_site_data(fed, pid)  # a user's files: `fedsilo.simulations.user_data`
    sid = site_id(pid)
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
    if sid in (fed.get("label_flip_sites") or "").split(","):
        from fedsilo.simulations.attacks import flip_labels

        options["label_transform"] = flip_labels
        options["provenance"] = {**options.get("provenance", {}), "label_flip": True}
    return SiteData(site_id=sid, options=options, seed=seed)


@lru_cache(maxsize=256)
def _build_site(federation_json: str, pid: int) -> Site:
    fed = json.loads(federation_json)
    task = resolve_task(str(fed["task"]), json.loads(fed.get("task_options") or "{}"))
    data = site_data(fed, pid)
    key = ledger = None
    run_dir = fed.get("sim_run_dir")
    if run_dir:
        site_dir = Path(run_dir) / "sites" / data.site_id
        key = lineage.load_or_create_key(site_dir / "key.pem")
        # Simulated sites share this machine's disk: their ledgers are flushed per line
        # but not fsynced (the server's chain still is). Real sites (`fedsilo site`) fsync.
        ledger = lineage.SiteLedger(site_dir / "ledger.jsonl", fsync=False)
    max_eps = fed.get("site_max_epsilon")
    policy = SitePolicy(max_epsilon=float(max_eps) if max_eps not in (None, "") else None)
    return task_site(task, data, key=key, ledger=ledger, policy=policy)

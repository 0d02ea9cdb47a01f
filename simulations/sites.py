"""Simulated sites: each virtual node builds its own data and identity from its partition id.

In simulation (and in the example Flower App), a node knows only its
``partition-id``; the server sends the federation's data settings with every message
and each node derives its partition locally and deterministically, as a real site
would load its own data. Sites are cached per process.
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
from fedsilo.simulations.datasets import load_dataset
from fedsilo.simulations.partition import PartitionSpec, partition
from fedsilo.simulations.scenario import site_id
from fedsilo.simulations.trainer import TorchTrainer


def simulated_site(context: Context, federation: Mapping[str, Any]) -> Site:
    """The `SiteFactory` of simulated federations (uses ``node_config['partition-id']``)."""
    pid = int(context.node_config["partition-id"])
    keys = ("dataset", "sites", "partition", "seed", "batch_size", "sim_run_dir",
            "run_id", "label_flip_sites", "site_max_epsilon")
    frozen = json.dumps({k: federation.get(k) for k in keys}, sort_keys=True, default=str)
    return _build_site(frozen, pid)


@lru_cache(maxsize=256)
def _build_site(federation_json: str, pid: int) -> Site:
    fed = json.loads(federation_json)
    data = load_dataset(str(fed["dataset"]), seed=int(fed["seed"]))
    spec = PartitionSpec.parse(str(fed["partition"]))
    parts = partition(data.y_train, int(fed["sites"]), spec, int(fed["seed"]))
    idx = parts[pid]
    x, y = data.x_train[idx], data.y_train[idx]
    sid = site_id(pid)
    preprocessing = {
        "source": f"sklearn.datasets.load_{data.name}",
        "test_split": "stratified 20%, seed",
        "standardise": "train-split mean/std",
        "partition": str(spec),
        "partition_seed": int(fed["seed"]),
        "partition_id": pid,
    }
    flipped = sid in (fed.get("label_flip_sites") or "").split(",")
    if flipped:
        from fedsilo.simulations.attacks import flip_labels

        y = flip_labels(y, data.num_classes)
        preprocessing["label_flip"] = True
    fingerprint = lineage.data_fingerprint({"x": x, "y": y}, preprocessing=preprocessing)
    trainer = TorchTrainer(
        x, y, data.num_classes, seed=int(fed["seed"]) * 100_003 + pid,
        batch_size=int(fed.get("batch_size") or 32), fingerprint=fingerprint,
    )
    key = ledger = None
    run_dir = fed.get("sim_run_dir")
    if run_dir:
        site_dir = Path(run_dir) / "sites" / sid
        key = lineage.load_or_create_key(site_dir / "key.pem")
        # Simulated sites share this machine's disk: their ledgers are flushed per line
        # but not fsynced (the server's chain still is). Real sites (`fedsilo site`) fsync.
        ledger = lineage.SiteLedger(site_dir / "ledger.jsonl", fsync=False)
    max_eps = fed.get("site_max_epsilon")
    policy = SitePolicy(max_epsilon=float(max_eps) if max_eps not in (None, "") else None)
    return Site(site_id=sid, trainer=trainer, key=key, ledger=ledger, policy=policy)

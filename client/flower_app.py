"""fedsilo's ClientApp as a Flower App component: the site a SuperNode serves.

The Flower App's ``clientapp`` (``fedsilo.client.flower_app:client_app`` in the apps that
``fedsilo server run`` generates and in ``examples/flower-app``) is `client_app`. A SuperNode
tells it which site it serves through its node config:

* ``site-config='/abs/site.toml'``: a real site; `fedsilo.client.site_config.load_site`
  builds it (task or Trainer entry point, key, ledger, policy) from that file;
* ``partition-id=N``: a demo site that derives its share of a bundled dataset from the
  federation settings the server sends (`fedsilo.tasks.partition.bundled_site_data`, the
  very share a simulation gives site N).

Heavy modules (torch, the datasets) are imported only when a site is built, since the
deployment runtime starts a fresh process per message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context

from fedsilo.client.app import Site, make_client_app
from fedsilo.client.site_config import SITE_CONFIG_KEY
from fedsilo.tasks.base import SiteData

# the federation settings a site built from the server's record depends on (its cache key)
FEDERATION_KEYS = ("task", "task_options", "data", "sites", "partition", "seed", "batch_size",
                   "sim_run_dir", "run_id", "label_flip_sites", "site_max_epsilon",
                   "data_shift", "data_shift_sites")


def node_site(context: Context, federation: Mapping[str, Any]) -> Site:
    """The ClientApp's `SiteFactory`: a configured site (``site-config``) or a demo one."""
    path = context.node_config.get(SITE_CONFIG_KEY)
    if path:
        from fedsilo.client.site_config import load_site

        return load_site(Path(str(path)))
    pid, frozen = federation_key(context, federation)
    return _demo_site(frozen, pid)


def federation_key(context: Context, federation: Mapping[str, Any]) -> tuple[int, str]:
    """(``partition-id`` of the node, the federation settings as canonical JSON): what a
    site built from the server's federation record depends on, hashable for a cache."""
    pid = int(context.node_config["partition-id"])
    fed = {k: federation.get(k) for k in FEDERATION_KEYS}
    if fed["task"] is None and federation.get("dataset"):  # federations sent before tasks
        fed["task"] = federation["dataset"]
    return pid, json.dumps(fed, sort_keys=True, default=str)


@lru_cache(maxsize=256)
def _demo_site(federation_json: str, pid: int) -> Site:
    from fedsilo.tasks.partition import bundled_site_data

    fed = json.loads(federation_json)
    return federation_site(fed, bundled_site_data(fed, pid))


def federation_site(fed: Mapping[str, Any], data: SiteData) -> Site:
    """The site of ``data`` under the federation record ``fed``: the task's Trainer, and,
    when ``fed`` names a run directory (``sim_run_dir``), a key and ledger under
    ``sites/<site-id>/`` there; ``site_max_epsilon`` (simulations) is its policy's ceiling."""
    from fedsilo import lineage
    from fedsilo.client.policy import SitePolicy
    from fedsilo.client.task_site import task_site
    from fedsilo.tasks import resolve_task

    task = resolve_task(str(fed["task"]), json.loads(fed.get("task_options") or "{}"))
    key = ledger = None
    run_dir = fed.get("sim_run_dir")
    if run_dir:
        site_dir = Path(run_dir) / "sites" / data.site_id
        key = lineage.load_or_create_key(site_dir / "key.pem")
        # Demo and simulated sites share this machine's disk: their ledgers are flushed per
        # line but not fsynced (the server's chain still is). Real sites (`fedsilo site`) fsync.
        ledger = lineage.SiteLedger(site_dir / "ledger.jsonl", fsync=False)
    max_eps = fed.get("site_max_epsilon")
    policy = SitePolicy(max_epsilon=float(max_eps) if max_eps not in (None, "") else None)
    return task_site(task, data, key=key, ledger=ledger, policy=policy)


client_app = make_client_app(node_site)

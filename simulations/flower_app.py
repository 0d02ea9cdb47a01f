"""Compatibility and demos: the Flower App moved to `fedsilo.server.flower_app` (the
ServerApp) and `fedsilo.client.flower_app` (the ClientApp).

Apps written before the move name ``fedsilo.simulations.flower_app:server_app`` and
``:client_app``; both are re-exported here. `bundled_trainer` (a site Trainer on one
share of a bundled dataset) stays here: it is a simulation of a site's data.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fedsilo.client.flower_app import client_app, node_site
from fedsilo.server.flower_app import (
    deployment_spec,
    run_config_dict,
    server_app,
    spec_from_context,
)

__all__ = ["bundled_trainer", "client_app", "deployment_spec", "node_site", "run_config_dict",
           "server_app", "spec_from_context"]


def bundled_trainer(
    dataset: str = "digits",
    partition_id: int = 0,
    sites: int = 3,
    partition: str = "iid",
    seed: int = 0,
    batch_size: int = 32,
) -> Any:
    """A site Trainer on one partition of a bundled dataset (for demos and tests).

    Use it as a ``site.toml`` entry point (``trainer =
    "fedsilo.simulations.flower_app:bundled_trainer"``) with its keyword arguments in
    ``[trainer_options]``.

    Parameters
    ----------
    dataset : digits, breast_cancer, wine (scikit-learn's bundled data) or mnist1d
        (generated offline by the `mnist1d` package).
    partition_id : which share of the training split this site holds, in [0, sites).
    sites : how many shares the training split is cut into.
    partition : iid, dirichlet:ALPHA or shards:K.
    seed : seed of the split and of local shuffling.
    batch_size : local mini-batch size.
    """
    from fedsilo.simulations.sites import simulated_site

    if not 0 <= int(partition_id) < int(sites):
        raise ValueError(f"partition_id: expected an integer in [0, {sites}), got {partition_id}")
    federation = {"task": dataset, "sites": int(sites), "partition": partition,
                  "seed": int(seed), "batch_size": int(batch_size)}
    context = SimpleNamespace(node_config={"partition-id": int(partition_id)})
    return simulated_site(context, federation).trainer  # type: ignore[arg-type]

"""Run a ServerApp and a ClientApp on Flower's simulation engine (Ray backend).

Flower 1.42 marks `flwr.simulation.run_simulation` deprecated in favour of
``flwr run`` against a simulation SuperLink; that path installs dependencies per run
and leaves a SuperLink behind (see DESIGN.md), so in-process simulation keeps the
deprecated function, behind this one function only.
"""

from __future__ import annotations

import logging
import os
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def quiet_environment() -> None:
    """No telemetry, no update checks, no Ray usage stats (there is no network)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def run_on_simulation_engine(
    server_app: ServerApp,
    client_app: ClientApp,
    num_sites: int,
    *,
    cpus: int | None = None,
    verbose: bool = False,
) -> None:
    """Run the apps with ``num_sites`` virtual SuperNodes on Ray; blocks until done.

    Parameters
    ----------
    server_app, client_app : the project's Flower apps.
    num_sites : number of virtual SuperNodes (each gets ``partition-id`` in its node config).
    cpus : CPUs given to Ray (default: all); each ClientApp instance takes one.
    verbose : keep Flower's INFO logs (off: warnings and errors only).
    """
    quiet_environment()
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)  # also hides the deprecation notice
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus or os.cpu_count() or 1,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_sites,
                backend_name="ray",
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(old_level)

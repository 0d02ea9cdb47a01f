"""Run a ServerApp and a ClientApp on Flower's simulation engine (Ray backend).

Flower 1.42 marks `flwr.simulation.run_simulation` deprecated in favour of
``flwr run`` against a simulation SuperLink; that path installs dependencies per run
and leaves a SuperLink behind (see DESIGN.md), so in-process simulation keeps the
deprecated function, behind this one function only.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsilo.server import stopping

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
    run_dir: Path | None = None,
) -> None:
    """Run the apps with ``num_sites`` virtual SuperNodes on Ray; blocks until done.

    Parameters
    ----------
    server_app, client_app : the project's Flower apps.
    num_sites : number of virtual SuperNodes (each gets ``partition-id`` in its node config).
    cpus : CPUs given to Ray (default: all); each ClientApp instance takes one.
    verbose : keep Flower's INFO logs (off: warnings and errors only).
    run_dir : the run directory: Ray's processes are recorded in ``run_dir/pids.json``
        while they run, and what a killed run recorded there is killed first.

    Ray is started here (Flower's backend then reuses it) so that fedsilo's SIGINT/SIGTERM
    handlers can be put back after ``ray.init`` replaced them. On SIGINT/SIGTERM (see
    `fedsilo.server.stopping`) the ServerApp closes its chain as ``interrupted``, Ray is
    shut down and `RunInterrupted` is raised; no Ray process outlives this function.
    """
    quiet_environment()
    import ray
    from flwr.simulation import run_simulation

    pids = None
    if run_dir is not None:
        stopping.PidRecord.clean_leftovers(run_dir)
        pids = stopping.PidRecord(run_dir)
        guard = stopping.active_guard()
        if guard is not None:
            guard.pids = pids
    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)  # also hides the deprecation notice
    quiet_after_stop = QuietAfterStop()
    flwr_logger.addFilter(quiet_after_stop)
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
    threads_before = set(threading.enumerate())
    recorder = _Recorder(pids)
    try:
        _init_ray(backend_config["init_args"])
        stopping.reinstall_handlers()  # ray.init made SIGTERM raise SystemExit
        recorder.start()
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
    except (KeyboardInterrupt, SystemExit):
        # the signal reached the main thread inside Flower's engine, which stopped Ray;
        # the ServerApp thread sees the stop request and closes the chain
        stopping.request_stop()
        _join_new_threads(threads_before, STOP_WAIT_S)
        raise stopping.RunInterrupted(
            f"interrupted by {_signal_name()}", run_dir=run_dir) from None
    except stopping.RunInterrupted as exc:
        exc.run_dir = run_dir
        raise
    finally:
        recorder.stop()
        if ray.is_initialized():
            ray.shutdown()
        if pids is not None:
            # whatever Ray left running (normally nothing; at times a ClientApp actor still
            # on its way out after ray.shutdown, which takes 1.3-1.6 s to honour SIGTERM):
            # the run is over, so SIGKILL it, without waiting out a grace period
            pids.finish(grace=0.0)
        flwr_logger.removeFilter(quiet_after_stop)
        flwr_logger.setLevel(old_level)


class QuietAfterStop(logging.Filter):
    """Drops Flower's log records once a stop is requested (SIGINT/SIGTERM): the engine is
    then shut down on purpose, and its errors about ClientApp actors dying mid-message
    (with their tracebacks) are the stop itself, not a failure to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not stopping.STOP.is_set()


STOP_WAIT_S = 6.0
"""How long an interrupted simulation waits for the ServerApp to close its chain."""
SERVER_THREAD = "server_th"
"""Part of the name of the thread Flower's ``run_simulation`` runs the ServerApp in."""
RECORD_EVERY_S = 1.0
"""How often Ray's processes (workers start on demand) are added to ``pids.json``."""


def _init_ray(init_args: dict[str, Any]) -> None:
    """``ray.init`` exactly as Flower's ``RayBackend.init_ray`` would (it then skips it)."""
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)


class _Recorder:
    """Adds this process's descendants (Ray's) to the PID record every `RECORD_EVERY_S`."""

    def __init__(self, pids: stopping.PidRecord | None) -> None:
        self.pids = pids
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.pids is None:
            return
        self.pids.add_children()
        self._thread = threading.Thread(target=self._run, name="fedsilo-pids", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.pids is not None
        while not self._done.wait(RECORD_EVERY_S):
            self.pids.add_children()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def _join_new_threads(before: set[threading.Thread], timeout: float) -> None:
    """Wait (at most ``timeout`` s) for the ServerApp's thread, started since ``before``, to
    close the chain. Flower names it after its target; Flower's ClientApp workers (which
    may wait on Ray actors that are gone) are not waited for."""
    deadline = time.monotonic() + timeout
    server = [t for t in set(threading.enumerate()) - before if SERVER_THREAD in t.name]
    for thread in server:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _signal_name() -> str:
    guard = stopping.active_guard()
    return guard.signal_name if guard is not None else "the operator"

"""Stopping a command cleanly on SIGINT/SIGTERM: moved to `fedsilo.common.stopping`.

Re-exported here (the same objects: `STOP`, the active guard) for the server's modules and
older imports; the deployment commands of the sites use it too, so it lives in the leaf layer.
"""

from __future__ import annotations

from fedsilo.common.stopping import (
    PIDS_NAME,
    STOP,
    LeftoverOwnerAlive,
    PidRecord,
    RunInterrupted,
    SignalGuard,
    active_guard,
    check_stop,
    reinstall_handlers,
    request_stop,
)

__all__ = ["LeftoverOwnerAlive", "PIDS_NAME", "PidRecord", "RunInterrupted", "STOP",
           "SignalGuard", "active_guard", "check_stop", "reinstall_handlers",
           "request_stop"]

"""Starting and stopping Flower's processes by PID: moved to `fedsilo.common.procs`.

Re-exported here for the server's deployment modules and older imports (the sites'
``fedsilo site`` uses the same helpers, so they live in the leaf layer).
"""

from __future__ import annotations

from fedsilo.common.procs import (
    QUIET_ENV,
    DeployError,
    ManagedProcess,
    Supervisor,
    check_port,
    child_env,
    clean_leftovers,
    descendants,
    flower_bin,
    free_port,
    port_in_use,
    wait_for_port,
)

__all__ = ["DeployError", "ManagedProcess", "QUIET_ENV", "Supervisor", "check_port",
           "child_env", "clean_leftovers", "descendants", "flower_bin", "free_port",
           "port_in_use", "wait_for_port"]

"""Crash injection for the resume tests: ``FEDSILO_FAULT=<point>@<round>`` SIGKILLs the server.

Points: ``mid_round`` (replies received, nothing aggregated), ``before_checkpoint``
(model aggregated, nothing saved), ``before_lineage`` (checkpoint saved, round record
not yet appended), ``lineage_write`` (inside the SQLite transaction of the round record,
after its INSERT, before its COMMIT), ``after_round``. Unset (the default) costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


def fault_point(name: str, server_round: int) -> None:
    """SIGKILL this process if ``FEDSILO_FAULT`` names this point and round."""
    spec = os.environ.get("FEDSILO_FAULT")
    if spec and spec == f"{name}@{server_round}":
        os.kill(os.getpid(), signal.SIGKILL)

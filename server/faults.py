"""Crash injection for the resume tests: ``FEDSILO_FAULT=<point>@<round>`` SIGKILLs the server.

Points: ``mid_round`` (replies received, nothing aggregated), ``before_checkpoint``
(model aggregated, nothing saved), ``before_lineage`` (checkpoint saved, round record
not yet appended), ``lineage_write`` (inside the SQLite transaction of the round record,
after its INSERT, before its COMMIT), ``after_round`` (the round on disk and reported to
the run's ``on_round``, e.g. ``rounds.jsonl``); at the end of the run, with the
run's last round: ``before_model`` (every round on disk, ``model.npz`` not yet written),
``before_closing`` (``model.npz`` written, the closing record not) and ``after_closing`` (``model.npz`` and the closing record written, ``metrics.json`` and
``report.html`` not). Unset (the default) costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

# every point, in the order a run passes them (the crash tests go through all of them)
POINTS = ("mid_round", "before_checkpoint", "before_lineage", "lineage_write", "after_round",
          "before_model", "before_closing", "after_closing")


def fault_point(name: str, server_round: int) -> None:
    """SIGKILL this process if ``FEDSILO_FAULT`` names this point and round."""
    spec = os.environ.get("FEDSILO_FAULT")
    if spec and spec == f"{name}@{server_round}":
        os.kill(os.getpid(), signal.SIGKILL)

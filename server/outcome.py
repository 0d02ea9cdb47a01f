"""How a run ended: its closing status, the progress it made, and the CLI's exit code.

A run's closing record (lineage) says why it ended. The statuses:

* ``completed``: every configured round ran and at least ``min_rounds_changed`` of
  them changed the model with site updates;
* ``no_progress``: fewer than ``min_rounds_changed`` rounds did (with the default 1:
  none did), whatever else happened; the CLI says so in one line and exits 3;
* ``budget_exhausted``: the privacy budget ended the run early (after enough progress);
* ``stopped_by_monitor``: an error flag of the run's monitor stopped it
  (``[monitor] on_error = "stop"``; the detail names the flag); the CLI exits 4;
* ``interrupted``: SIGINT/SIGTERM or Ctrl-C; resumable from the checkpoint;
* ``error``: the server failed.

``rounds_done`` is the legacy name of ``completed`` (chains written before the
distinction); it is still read, and verifies, everywhere.

A round "changed the model" when its record is ``completed`` and at least one site's
update fed it (accepted contributions, or sites in the SecAgg+ sum): a DP round whose
every sampled site refused releases noise only, and counts as a round without progress.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPLETED = "completed"
NO_PROGRESS = "no_progress"
BUDGET_EXHAUSTED = "budget_exhausted"
STOPPED_BY_MONITOR = "stopped_by_monitor"
INTERRUPTED = "interrupted"
ERROR = "error"
LEGACY_COMPLETED = "rounds_done"

CLOSING_REASONS = (COMPLETED, NO_PROGRESS, BUDGET_EXHAUSTED, STOPPED_BY_MONITOR, INTERRUPTED,
                   ERROR, LEGACY_COMPLETED)
# statuses after which the run is over and its outputs (model.npz...) must exist
FINISHED = (COMPLETED, NO_PROGRESS, BUDGET_EXHAUSTED, STOPPED_BY_MONITOR, LEGACY_COMPLETED)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_PROGRESS = 3
EXIT_STOPPED_BY_MONITOR = 4
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    COMPLETED: EXIT_OK, LEGACY_COMPLETED: EXIT_OK, BUDGET_EXHAUSTED: EXIT_OK,
    NO_PROGRESS: EXIT_NO_PROGRESS, ERROR: EXIT_ERROR, INTERRUPTED: EXIT_INTERRUPTED,
    STOPPED_BY_MONITOR: EXIT_STOPPED_BY_MONITOR,
}
EXIT_CODES_HELP = (
    "exit codes: 0 the run completed (or its privacy budget ended it after progress); "
    "3 no_progress (no round changed the model); 4 stopped_by_monitor (an error flag "
    "stopped the run); 1 error (the run failed, or a process "
    "did); 2 bad input; 130 interrupted"
)


def exit_code(status: str) -> int:
    """The CLI exit code of a run that closed with ``status`` (unknown: 1)."""
    return EXIT_CODES.get(status, EXIT_ERROR)


def unchanged_reason(status: str, accepted: int, reason: str | None,
                     rejected: Mapping[str, str]) -> str | None:
    """Why a round did not change the model (None: it did).

    The reason is kept stable across rounds (no per-round numbers from refusals) so
    that the most common one can be named in the run's closing detail.
    """
    if status == "completed" and accepted > 0:
        return None
    if reason:
        return reason.removesuffix("; global model unchanged")
    refusals = [r.removeprefix("refused by site: ") for r in rejected.values()
                if r.startswith("refused by site: ")]
    if rejected and len(refusals) == len(rejected):
        kinds = sorted({r.split(":")[0].strip() for r in refusals})
        return f"every sampled site refused ({', '.join(kinds)})"
    if rejected:
        return "no site's update was accepted"
    return "no site's update reached the model"


def body_accepted(body: Mapping[str, Any]) -> int:
    """Sites whose update fed a round, from its lineage record body (plain or SecAgg+)."""
    secagg = body.get("secagg") or {}
    return len(body.get("accepted") or []) or len(secagg.get("participant_sites") or [])


@dataclass
class RunProgress:
    """Rounds run and rounds that changed the model, with the reasons of the others."""

    rounds: int = 0
    changed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, accepted: int, reason: str | None,
            rejected: Mapping[str, str]) -> None:
        self.rounds += 1
        why = unchanged_reason(status, accepted, reason, rejected)
        if why is None:
            self.changed += 1
        else:
            self.reasons[why] = self.reasons.get(why, 0) + 1

    @classmethod
    def from_bodies(cls, bodies: Iterable[Mapping[str, Any]]) -> RunProgress:
        """From the round records of a chain (each round once, in order)."""
        out = cls()
        for b in bodies:
            out.add(b["status"], body_accepted(b), b.get("reason"), b.get("rejected") or {})
        return out

    def statement(self) -> str:
        """E.g. "12 of 30 rounds changed the model; 18 skipped: <most common reason>"."""
        text = f"{self.changed} of {self.rounds} rounds changed the model"
        skipped = self.rounds - self.changed
        if skipped:
            top, count = Counter(self.reasons).most_common(1)[0]
            others = "" if count == skipped else f" ({skipped - count} for other reasons)"
            text += f"; {skipped} skipped: {top}{others}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "changed": self.changed, "reasons": dict(self.reasons)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunProgress:
        return cls(int(data["rounds"]), int(data["changed"]), dict(data["reasons"]))


def closing_status(progress: RunProgress, min_rounds_changed: int,
                   budget: str | None = None) -> tuple[str, str]:
    """(status, detail) of a run that ended without error; ``budget``: why the privacy
    budget ended it early, if it did."""
    detail = progress.statement()
    if budget is not None:
        detail = f"{budget}; {detail}"
    if progress.changed < min_rounds_changed:
        if progress.changed:  # some progress, but less than the run asked for
            detail += f"; fewer than min_rounds_changed = {min_rounds_changed}"
        return NO_PROGRESS, detail
    return (BUDGET_EXHAUSTED if budget is not None else COMPLETED), detail


def run_outcome(run_dir: Path, flwr_status: str) -> tuple[str, str]:
    """The run's own status and detail, from its lineage closing record (``metrics.json``
    when the run keeps no chain); ``error`` when it has neither (the ServerApp died
    before closing). Flower's ``finished:completed`` only says the ServerApp returned."""
    from fedsilo import lineage

    db = run_dir / "lineage.sqlite"
    if db.exists():
        try:
            chain = lineage.read_chain(db)
        except lineage.LineageError as exc:
            return ERROR, f"{db}: {exc}"
        if chain and chain[-1]["type"] == "closing":
            body = chain[-1]["body"]
            return str(body["reason"]), str(body["detail"])
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        data = json.loads(metrics.read_text())
        return str(data["closing_reason"]), str(data.get("closing_detail", ""))
    return ERROR, f"no closing record in {run_dir} (Flower: {flwr_status})"

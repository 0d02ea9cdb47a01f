"""Live progress of a run (rich): round, accuracy, the sites' own scores (mean and worst
site), epsilon, elapsed time."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedsilo.server.loop import RoundSummary
from fedsilo.server.site_eval import headline


def site_scores(summary: RoundSummary) -> str | None:
    """``sites acc mean 0.9458 worst 0.8727 (site-002)``: the sampled sites' scores of the
    round's model on their own held-out splits (None: not evaluated this round). The
    only evaluation a deployment whose server holds no data has."""
    name = headline(summary.site_eval)
    if name is None or summary.site_eval is None:
        return None
    short = {"accuracy": "acc"}.get(name, name)
    ev = summary.site_eval
    return (f"sites {short} mean {ev['mean'][name]:.4f} worst {ev['worst'][name]:.4f} "
            f"({ev['worst_site'][name]})")


class RoundProgress:
    """Context manager showing a progress bar over rounds; ``update`` is the on_round hook."""

    def __init__(self, total_rounds: int, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.total = total_rounds
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("rounds", total=total_rounds, status="starting federation")

    def __enter__(self) -> RoundProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, summary: RoundSummary) -> None:
        parts = []
        if summary.test_accuracy is not None:
            parts.append(f"acc {summary.test_accuracy:.4f}")
        if summary.test_loss is not None:
            parts.append(f"loss {summary.test_loss:.4f}")
        sites = site_scores(summary)
        if sites is not None:
            parts.append(sites)
        if summary.epsilon is not None:
            parts.append(f"eps {summary.epsilon:.3f}")
        parts.append(f"sites {summary.accepted}/{summary.sampled}")
        if summary.status != "completed":
            parts.append(f"[yellow]{summary.status}[/]")
        self._progress.update(self._task, completed=summary.round, status="  ".join(parts))

"""Live progress of a run: round, accuracy, the sites' own scores (mean and worst site),
epsilon, elapsed time.

On a terminal it is a rich progress bar. When stderr is not a terminal (a log file, a
pipe, a benchmark reading it), a bar cannot redraw, so each round is one plain line as it
ends, stamped with the seconds since the run started::

    round 3/20  acc 0.9100  loss 0.3120  sites 10/10  [12.41s]
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
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
    """Context manager showing a progress bar over rounds; ``update`` is the on_round hook.

    Parameters
    ----------
    total_rounds : the run's rounds (the bar's length).
    enabled : False (``--quiet``): show nothing.
    console : where to draw (default: stderr). Not a terminal: one plain line per round.
    """

    def __init__(self, total_rounds: int, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.total = total_rounds
        self.started = time.monotonic()
        self._console = console or Console(stderr=True)
        # a bar needs a terminal to redraw; elsewhere rich would print only the last state
        self._lines = not self._console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._task = self._progress.add_task("rounds", total=total_rounds, status="starting federation")

    def __enter__(self) -> RoundProgress:
        if self.enabled and not self._lines:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled and not self._lines:
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
            parts.append(f"[yellow]{summary.status}[/]" if not self._lines else summary.status)
        if self._lines:
            if self.enabled:
                elapsed = time.monotonic() - self.started
                print(f"round {summary.round}/{self.total}  {'  '.join(parts)}  [{elapsed:.2f}s]",
                      file=self._console.file, flush=True)
                for flag in summary.flags:  # the monitor's flags, as they happen
                    print(flag_line(flag, markup=False), file=self._console.file, flush=True)
            return
        self._progress.update(self._task, completed=summary.round, status="  ".join(parts))
        for flag in summary.flags if self.enabled else ():
            self._progress.console.print(flag_line(flag))


_STYLE = {"info": "blue", "warning": "yellow", "error": "bold red"}


def flag_line(flag: dict, *, markup: bool = True) -> str:
    """``flag round 3  error    free_rider  site-004  norm=0.0, peers_median=0.41 (action)``
    (rich markup colours the severity; ``markup=False``: plain text)."""
    evidence = ", ".join(f"{k}={v}" for k, v in sorted(flag["evidence"].items()))
    action = f"  ({flag['action']})" if flag.get("action", "none") != "none" else ""
    text = f"{flag['code']}  {flag['site'] or '-'}  {evidence}{action}"
    severity = f"{flag['severity']:<7}"
    if markup:  # site-given text is escaped: it must not be read as markup
        severity, text = f"[{_STYLE[flag['severity']]}]{severity}[/]", escape(text)
    return f"flag round {flag['round']}  {severity}  {text}"

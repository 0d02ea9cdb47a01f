"""The report's flags: markers on the per-round curves and the flags table (``report.html``).

A flagged round gets a vertical line on the accuracy and loss plots, coloured by the most
severe flag of the round; the table lists every flag with its evidence and the action
taken. Under SecAgg+ the section says which flags could not apply.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

COLOURS = {"info": "tab:blue", "warning": "tab:orange", "error": "tab:red"}
_ORDER = ("info", "warning", "error")


def mark_flags(axes: Sequence[Any], rounds: Sequence[Any]) -> None:
    """A vertical line per flagged round on each of ``axes`` (its worst severity's colour)."""
    for r in rounds:
        flags = getattr(r, "flags", None) or []
        if not flags:
            continue
        worst = max((f["severity"] for f in flags), key=_ORDER.index)
        for ax in axes:
            ax.axvline(r.round, color=COLOURS[worst], lw=1.2, ls="--", alpha=0.8)


def flags_section(rounds: Sequence[Any], *, secagg: bool) -> str:
    """The "Flags" section: a table of every flag (or a line saying there was none)."""
    flags = [f for r in rounds for f in (getattr(r, "flags", None) or [])]
    note = ("<p>Under SecAgg+ the server sees no individual update: the update flags "
            "(update_norm_outlier, update_opposes_aggregate, free_rider) do not apply.</p>"
            if secagg else "")
    if not flags:
        return f"<h2>Flags</h2><p>The monitor raised no flag.</p>{note}"
    rows = "".join(
        f'<tr><td>{f["round"]}</td><td style="color:{COLOURS[f["severity"]].split(":")[1]}">'
        f'{html.escape(f["severity"])}</td><td><code>{html.escape(f["code"])}</code></td>'
        f'<td>{html.escape(f["site"] or "-")}</td><td>'
        + html.escape(", ".join(f"{k}={v}" for k, v in sorted(f["evidence"].items())))
        + f'</td><td>{html.escape(f.get("action", "none"))}</td></tr>'
        for f in flags)
    return ("<h2>Flags</h2><p>Raised by the run's monitor from what the server saw "
            "(dashed lines on the curves above; <code>fedsilo monitor RUN_DIR</code> lists them).</p>"
            f"{note}<table><tr><th>round</th><th>severity</th><th>code</th><th>site</th>"
            f"<th>evidence</th><th>action</th></tr>{rows}</table>")

"""Send a batch of messages and collect the replies, polling for them promptly.

Flower's deployment grid (`HttpGrid.send_and_receive`, Flower 1.42) sleeps a fixed 3 s
between polls for replies, so every message exchange there waits up to 3 s after the
last reply has arrived at the SuperLink (1.5 s on average). A SecAgg+ round has three
exchanges, a plain round one. `send_and_receive` does the same push-then-pull
through the Grid's own `push_messages` / `pull_messages`, but polls after 50 ms, then
backs off to at most `MAX_POLL_S`: replies are collected within a fraction of a second,
and a long training round costs the SuperLink two pull requests a second.

Grids that poll in-memory state (Flower's simulation engine: a ``pull_interval``
attribute, tuned to 10 ms by `fedsilo.server.app.tune_grid`) are polled every
``pull_interval`` instead: polling memory every 10 ms beats any back-off. Objects that are
not Flower `Grid` subclasses (test doubles) keep their own ``send_and_receive``.

Every poll checks `fedsilo.server.stopping.STOP`: after SIGINT/SIGTERM a round that waits
for replies (up to ``round_timeout``, 10 minutes by default) ends within one poll, with
`RunInterrupted`, instead of when the sites answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedsilo.server.stopping import check_stop

FIRST_POLL_S = 0.05
"""Wait before the first poll for replies (then doubled after each empty poll)."""
MAX_POLL_S = 0.5
"""Longest wait between two polls for replies."""


def send_and_receive(grid: Grid, messages: Iterable[Message], *,
                     timeout: float | None) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Same contract as Flower's ``Grid.send_and_receive``: replies come back in arrival
    order, late ones are left behind, ``timeout=None`` waits for all of them. Raises
    `RunInterrupted` when a stop is requested (SIGINT/SIGTERM) while it waits.
    """
    check_stop()
    if not isinstance(grid, Grid):
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        check_stop()
        return replies
    in_memory = hasattr(grid, "pull_interval")
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    wait = float(grid.pull_interval) if in_memory else FIRST_POLL_S
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending:
            break
        check_stop()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = min(wait, left)
        time.sleep(wait)
        if not in_memory:
            wait = min(2 * wait, MAX_POLL_S)
    return replies

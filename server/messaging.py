"""Send a batch of messages and collect the replies, polling for them promptly.

Flower's deployment grid (`HttpGrid.send_and_receive`, Flower 1.42) sleeps a fixed 3 s
between polls for replies, so every message exchange there waits up to 3 s after the
last reply has arrived at the SuperLink (1.5 s on average). A SecAgg+ round has three
exchanges, a plain round one. `send_and_receive` does the same push-then-pull
through the Grid's own `push_messages` / `pull_messages`, but polls after 50 ms, then
backs off to at most `MAX_POLL_S`: replies are collected within a fraction of a second,
and a long training round costs the SuperLink two pull requests a second.

Grids that poll in-memory state (Flower's simulation engine: a ``pull_interval``
attribute, tuned to 10 ms by `fedsilo.server.app.tune_grid`) are polled after
``pull_interval`` too, but a poll there is not free: Flower's in-memory link state checks
every pending message id under the lock its workers need to store their replies (about
3 us per id), so polling 1,000 pending handshake replies every 10 ms kept a core busy.
After an empty poll the wait doubles, up to a cap that grows with the number of pending
replies (`in_memory_cap`: 10 ms up to 50 pending, 0.2 s at 1,000), and each poll that
brings replies starts over from ``pull_interval``: a round's last reply is collected
within 10 ms at 10 sites, within ~20 ms with 100 sampled sites. Objects that are not
Flower `Grid` subclasses (test doubles) keep their own ``send_and_receive``.

``window`` (in-memory grids only) keeps at most that many messages in flight, pushing the
next ones as replies come in. Flower's simulation engine hands messages to its workers by
scanning, every 0.1 s, all stored messages once per node (`get_message_ins`): pushing
1,000 handshake queries at once makes every scan cost 1,000 x 1,000 checks under the
link state's lock; a window of ~a round's sample keeps the scan at a round's cost.

Every poll checks `fedsilo.server.stopping.STOP`: after SIGINT/SIGTERM a round that waits
for replies (up to ``round_timeout``, 10 minutes by default) ends within one poll, with
`RunInterrupted`, instead of when the sites answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedsilo.server.stopping import check_stop

FIRST_POLL_S = 0.05
"""Wait before the first poll for replies (then doubled after each empty poll)."""
MAX_POLL_S = 0.5
"""Longest wait between two polls for replies."""
IN_MEMORY_S_PER_PENDING = 0.0002
"""In-memory grids: the longest wait grows by this per pending reply (a poll costs a few
microseconds per pending id, so polls then take about 1-2% of the server's time)."""
IN_MEMORY_MAX_POLL_S = 0.2
"""In-memory grids: longest wait between two polls, however many replies are pending."""


def in_memory_cap(pull_interval: float, pending: int) -> float:
    """Longest wait between two polls of an in-memory grid with ``pending`` replies due."""
    return min(IN_MEMORY_MAX_POLL_S, max(pull_interval, pending * IN_MEMORY_S_PER_PENDING))


def send_and_receive(grid: Grid, messages: Iterable[Message], *,
                     timeout: float | None,
                     on_reply: Callable[[Message], None] | None = None,
                     window: int | None = None) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Same contract as Flower's ``Grid.send_and_receive``: replies come back in arrival
    order, late ones are left behind, ``timeout=None`` waits for all of them. Raises
    `RunInterrupted` when a stop is requested (SIGINT/SIGTERM) while it waits.
    ``on_reply`` (if given) is called with each reply as it is pulled, so work on it
    (its digest: `fedsilo.server.reply_digests`) overlaps the wait for the others; a
    test double's replies are passed to it once they are all in. ``window``: in-memory
    grids only, at most that many messages in flight at once (None: all at once).
    """
    check_stop()
    if not isinstance(grid, Grid):
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        check_stop()
        for reply in replies if on_reply is not None else ():
            on_reply(reply)
        return replies
    in_memory = hasattr(grid, "pull_interval")
    todo = list(messages)
    in_flight = window if in_memory and window else len(todo)
    pending: set[str] = set()
    sent = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    first = float(grid.pull_interval) if in_memory else FIRST_POLL_S
    wait = first
    while pending or sent < len(todo):
        if sent < len(todo) and len(pending) < in_flight:  # (re)fill the window
            batch = todo[sent:sent + in_flight - len(pending)]
            sent += len(batch)
            pending.update(grid.push_messages(batch))
            if not pending:
                continue
        got = list(grid.pull_messages(pending))
        for reply in got if on_reply is not None else ():
            on_reply(reply)
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending:
            if sent == len(todo):
                break
            continue  # the window emptied: send the next ones now
        if in_memory and got:  # replies are arriving: look again soon
            wait = first
        check_stop()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = min(wait, left)
        time.sleep(wait)
        cap = in_memory_cap(first, len(pending)) if in_memory else MAX_POLL_S
        wait = min(2 * wait, cap)
    return replies

"""Site side of the federated statistics: in clear, or summed under SecAgg+.

Before round 1 the server asks every site for its task's statistics (per-site sums,
`fedsilo.tasks.statistics`). `statistics_reply` answers the clear query: the sums
themselves, unless the run sums them under SecAgg+ (the query says so, under
`SECURE_KEY`) or the site's policy requires SecAgg+; then only their layout (names and
shapes) is sent, never the values, and a site whose policy requires SecAgg+ refuses a
run that does not use it.

`register_secure_statistics` adds the four stages of the statistics' SecAgg+ exchange
(message types `SECURE_MESSAGE_TYPES`) to a ClientApp. They run the training rounds'
SecAgg+ handler (`fedsilo.client.secagg_handler`) with the site's sums, encoded by
`fedsilo.tasks.statistics.secure_vector`, as its masked input (weight 1, nothing signed
or recorded: no model update is sent). The exchange's protocol state is kept in the
node's state beside the training rounds' (under `STATE_KEY`), which it never touches:
the first round's keys, advertised at the handshake, survive it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsilo.client import secagg_handler as handler
from fedsilo.client.update import LocalUpdate
from fedsilo.common.protocol import SECAGG_ERROR_CODE
from fedsilo.privacy.secagg.records import decode_request
from fedsilo.tasks.statistics import (
    LAYOUT_KEY,
    SECURE_KEY,
    SECURE_MESSAGE_TYPES,
    SECURE_RUN_SUFFIX,
    STATISTICS_KEY,
    STATISTICS_RECORD,
    StatisticsError,
    decode_layout,
    encode_layout,
    encode_statistics,
    layout_of,
    secure_vector,
)

STATE_KEY = "secagg_statistics_state"
"""Node state key of the statistics exchange's protocol state (between its stages)."""

SiteStatistics = Callable[[Message, Context], "Mapping[str, np.ndarray] | None"]
"""The site's per-site sums for the message's federation (None: the task has none)."""


def statistics_reply(site_id: str, stats: Mapping[str, np.ndarray] | None,
                     federation: Mapping[str, Any], require_secagg: bool) -> RecordDict:
    """The reply to a clear statistics query: the sums, or under SecAgg+ their layout only.

    `StatisticsError` when the site's policy requires SecAgg+ and the run does not use it.
    """
    secure = bool(federation.get(SECURE_KEY, False))
    if require_secagg and not secure:
        raise StatisticsError(f"site {site_id}: its policy requires SecAgg+; it does not "
                              "send its statistics in clear")
    fields: dict[str, Any] = {"site_id": site_id, STATISTICS_KEY: ""}
    if stats is not None and secure:
        fields[LAYOUT_KEY] = encode_layout(layout_of(stats))
    elif stats is not None:
        fields[STATISTICS_KEY] = encode_statistics(stats)
    return RecordDict({STATISTICS_RECORD: ConfigRecord(fields)})


def _swap(context: Context, put: str, take: str) -> None:
    """Move the node state's record ``take`` to ``put`` (nothing if there is none)."""
    rec = context.state.pop(take, None)
    if rec is not None:
        context.state[put] = rec


def _handle(stage: str, message: Message, context: Context, statistics: SiteStatistics
            ) -> Message:
    """One stage of the statistics' exchange, through the rounds' handler, with the
    training rounds' state set aside and put back whatever happens."""
    if stage == "setup":  # the exchange's own run id: it never claims a training round
        try:
            run_id = str(decode_request(stage, message.content).run_id)  # type: ignore[attr-defined]
        except (ValueError, KeyError) as exc:
            run_id = f"(unreadable: {exc})"
        if not run_id.endswith(SECURE_RUN_SUFFIX):
            return Message(Error(SECAGG_ERROR_CODE, f"secagg: statistics setup for run "
                                 f"{run_id!r}, expected a '{SECURE_RUN_SUFFIX}' run"),
                           reply_to=message)
    node = int(context.node_id)
    kept = {k: context.state.pop(k) for k in (handler.STATE_KEY, handler.NEXT_STATE_KEY)
            if k in context.state}
    live = handler._LIVE.pop(node, None), handler._LIVE_NEXT.pop(node, None)
    _swap(context, handler.STATE_KEY, STATE_KEY)

    def masked_input(msg: Message, ctx: Context) -> LocalUpdate:
        rec = msg.content.get(STATISTICS_RECORD)
        if not isinstance(rec, ConfigRecord) or LAYOUT_KEY not in rec:
            raise StatisticsError("statistics: a secure statistics request without its layout")
        stats = statistics(msg, ctx)
        if stats is None:
            raise StatisticsError("statistics: this site's task has no statistics")
        vector = secure_vector(stats, decode_layout(str(rec[LAYOUT_KEY])))
        return LocalUpdate(delta=vector, weight=1.0, num_examples=0)

    try:
        return handler._handle(stage, message, context, masked_input, None)
    finally:
        if stage != "unmask":  # the exchange's state, until its last stage
            _swap(context, STATE_KEY, handler.STATE_KEY)
        context.state.pop(handler.STATE_KEY, None)
        context.state.pop(handler.NEXT_STATE_KEY, None)
        handler._LIVE.pop(node, None)
        handler._LIVE_NEXT.pop(node, None)
        for key, rec in kept.items():
            context.state[key] = rec
        if live[0] is not None:
            handler._LIVE[node] = live[0]
        if live[1] is not None:
            handler._LIVE_NEXT[node] = live[1]


def register_secure_statistics(app: ClientApp, statistics: SiteStatistics) -> None:
    """Register the statistics' SecAgg+ stages on ``app``; ``statistics`` gives the site's
    sums for a message (its federation record names the run)."""
    for stage, mtype in SECURE_MESSAGE_TYPES.items():
        action = mtype.split(".", 1)[1]

        def fn(message: Message, context: Context, stage: str = stage) -> Message:
            return _handle(stage, message, context, statistics)

        app.query(action)(fn)

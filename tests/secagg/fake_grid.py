"""An in-process stand-in for Flower's Grid: routes messages to a ClientApp directly.

Only for fast tests of the Message API glue; the real engine is exercised in
test_simulation.py. Exceptions raised by the ClientApp become error replies, as the
Flower runtime does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp


class FakeGrid:
    """Delivers each message to ``app`` with a per-node persistent Context.

    Parameters
    ----------
    app:
        The ClientApp under test.
    node_ids:
        Node ids; partition-id i is given to the i-th node.
    mangle:
        Optional ``f(reply) -> reply | None`` applied to each reply (None = lost).
    """

    def __init__(self, app: ClientApp, node_ids: list[int],
                 mangle: Callable[[Message], Message | None] | None = None) -> None:
        self.app = app
        self.mangle = mangle
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={"partition-id": i},
                       state=RecordDict(), run_config={})
            for i, n in enumerate(node_ids)
        }
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            self.sent.append(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            try:
                rep = self.app(msg, ctx)
            except Exception as e:  # mimic the runtime: error reply
                rep = Message(Error(2, f"{type(e).__name__}: {e}"), reply_to=msg)
            if self.mangle is not None:
                rep = self.mangle(rep)
            if rep is not None:
                self.received.append(rep)
                out.append(rep)
        return out

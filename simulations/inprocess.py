"""An in-process `Grid`: the project's ServerApp and ClientApp without Ray.

For sweeps of hundreds of small runs (the robustness benchmark), starting Ray per run
costs more than the runs. `InProcessGrid` implements Flower's `Grid` interface by
calling the ClientApp directly, one message after another, in this process. The
ServerApp and ClientApp are the very same objects the simulation engine runs; only
the transport differs. Not a replacement for Flower's engines: no isolation, no
parallelism, no timeouts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

_SERVER_NODE_ID = 0
_RUN_ID = 1


class InProcessGrid(Grid):
    """A Grid of ``num_nodes`` virtual nodes served by ``client_app`` in this process.

    Parameters
    ----------
    client_app : the ClientApp every node runs.
    num_nodes : number of nodes; node ``i`` gets ``partition-id = i`` in its node config.
    seed : seeds the (random-looking, like Flower's) node ids.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, *, seed: int = 0) -> None:
        rng = random.Random(seed)
        self._client_app = client_app
        self._contexts: dict[int, Context] = {}
        for i in range(num_nodes):
            node_id = rng.getrandbits(62) + 1
            self._contexts[node_id] = Context(
                run_id=_RUN_ID, node_id=node_id,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(), run_config={},
            )
        self._run: Run | None = None
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:  # pragma: no cover - interface only
        self._run = run

    @property
    def run(self) -> Run:  # pragma: no cover - interface only
        if self._run is None:
            raise RuntimeError("no run set")
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:  # pragma: no cover
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def get_nodes(self) -> Iterable[object]:  # pragma: no cover - interface only
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(msg.metadata.message_id)
            self._replies[msg.metadata.message_id] = self._deliver(msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message:
        context = self._contexts[msg.metadata.dst_node_id]
        try:
            reply = self._client_app(msg, context)
        except Exception as exc:  # the node's failure becomes an error reply, as in Flower
            reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply


def run_in_process(server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    """Run the apps on an `InProcessGrid` (blocking)."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = _RUN_ID
    TaskIdentity.node_id = _SERVER_NODE_ID
    grid = InProcessGrid(client_app, num_nodes)
    context = Context(run_id=_RUN_ID, node_id=_SERVER_NODE_ID, node_config={},
                      state=RecordDict(), run_config={})
    server_app(grid, context)

"""A tiny ClientApp using register_secagg with a deterministic fit_update (shared by the
fake-grid tests and the real simulation test)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsilo.client.secagg_handler import LocalUpdate, register_secagg

D = 257  # model size: one 16x16 matrix and one bias


def site_update(pid: int) -> tuple[np.ndarray, float]:
    """The update and weight of partition ``pid`` (deterministic)."""
    rng = np.random.default_rng(1000 + pid)
    return rng.uniform(-0.05, 0.05, D).astype(np.float32), float(10 * (pid + 1))


def train_content(server_round: int = 1) -> RecordDict:
    """Global model + training config, as the lead's ServerApp sends them."""
    model = ArrayRecord({"w": Array(np.zeros((16, 16), np.float32)),
                         "b": Array(np.zeros(1, np.float32))})
    return RecordDict({"arrays": model, "config": ConfigRecord({"lr": 0.1,
                                                                "server-round": server_round})})


def make_client_app(fail_pid: int | None = None, fail_round: int | None = None) -> ClientApp:
    """ClientApp whose fit_update returns `site_update(partition-id)`.

    ``fail_pid``: that partition's training raises (a site failing at the masked stage),
    in every round or only in round ``fail_round``.
    """
    app = ClientApp()

    def fit_update(message: Message, context: Context) -> LocalUpdate:
        pid = int(context.node_config["partition-id"])
        cfg = message.content["config"]
        assert isinstance(cfg, ConfigRecord)
        if pid == fail_pid and fail_round in (None, cfg["server-round"]):
            raise RuntimeError(f"site {pid} crashed while training")
        arrays = message.content["arrays"]
        assert isinstance(arrays, ArrayRecord) and set(arrays) == {"w", "b"}
        delta, weight = site_update(pid)
        return LocalUpdate(delta=delta, weight=weight, metrics={"train_loss": 0.1 * pid})

    register_secagg(app, fit_update)
    return app

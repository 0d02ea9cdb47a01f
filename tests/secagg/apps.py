"""A tiny ClientApp using register_secagg with a deterministic fit_update (shared by the
fake-grid tests and the real simulation test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsilo.client.secagg_handler import LocalUpdate, register_secagg
from fedsilo.lineage import SiteLedger, load_or_create_key, public_key_hex
from fedsilo.server.secagg_round import Signer

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


@dataclass
class StubSite:
    """A signing site (what `register_secagg`'s ``identify`` returns)."""

    site_id: str
    key: Ed25519PrivateKey
    data_fingerprint: str
    ledger: Any = None


def site_key(pid: int) -> Ed25519PrivateKey:
    """Partition ``pid``'s Ed25519 site key (deterministic)."""
    return Ed25519PrivateKey.from_private_bytes(bytes([pid + 1]) * 32)


def site_fingerprint(pid: int) -> str:
    return "sha256:" + f"{pid + 1:02x}" * 32


def signers(nodes: list[int]) -> dict[int, Signer]:
    """What the server knows of node ``nodes[i]`` (partition i) from the handshake."""
    return {n: Signer(public_key_hex(site_key(i)), site_fingerprint(i))
            for i, n in enumerate(nodes)}


def write_site_key(path: Path, pid: int) -> None:
    """Store `site_key(pid)` as the PEM file `load_or_create_key` reads (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(site_key(pid).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)


def make_client_app(fail_pid: int | None = None, fail_round: int | None = None,
                    sign: bool = False, ledger_dir: Path | None = None,
                    key_dir: Path | None = None,
                    identified: list[str] | None = None) -> ClientApp:
    """ClientApp whose fit_update returns `site_update(partition-id)`.

    ``fail_pid``: that partition's training raises (a site failing at the masked stage),
    in every round or only in round ``fail_round``. ``sign``: the sites sign their masked
    inputs and unmask replies (`site_key`; loaded from ``key_dir/<pid>.pem`` if given, see
    `write_site_key`), keeping ledgers in ``ledger_dir`` if given. ``identified`` collects
    the message type of every call to the site's ``identify``.
    """
    app = ClientApp()

    def identify(message: Message, context: Context) -> StubSite:
        pid = int(context.node_config["partition-id"])
        if identified is not None:
            identified.append(message.metadata.message_type)
        ledger = None if ledger_dir is None else SiteLedger(ledger_dir / f"{pid}.jsonl",
                                                            fsync=False)
        key = site_key(pid) if key_dir is None else load_or_create_key(key_dir / f"{pid}.pem")
        return StubSite(f"site-{pid}", key, site_fingerprint(pid), ledger)

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

    register_secagg(app, fit_update, identify if sign else None)
    return app

"""`fedsilo.server.reply_digests`: update digests computed as replies arrive.

The precomputed digest must be exactly `lineage.update_digest` of the update the verify
step aggregates (same value, same bytes), be handed out only for that memory, never
raise on a malformed reply (screening still rejects it with its reason), and leave the
verify step's outcome unchanged. `send_and_receive` feeds it each reply as pulled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from helpers.messages import error_message, message, reply_content

from fedsilo import lineage
from fedsilo.common.codec import ModelLayout, decode_flat
from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.server import messaging
from fedsilo.server.reply_digests import ReplyDigests
from fedsilo.server.spec import SiteInfo
from fedsilo.server.verify_replies import verify_plain
from fedsilo.strategies.pipeline import batch_from_replies

RUN_ID, ROUND, DIM = "run-1", 3, 1000
FINGERPRINT = "sha256:" + "f" * 64
POLICY = ScreeningPolicy(max_norm=1e6)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    yield


def _signed(delta: np.ndarray, node: int, key: Ed25519PrivateKey) -> Message:
    """A well-formed reply from ``node`` (site ``site-<node>``) signed with ``key``."""
    content = reply_content(delta, 10, site_id=f"site-{node}")
    site = content["site"]
    assert isinstance(site, ConfigRecord)
    digest = lineage.update_digest(delta.astype(np.float32))
    site["update_digest"], site["data_fingerprint"] = digest, FINGERPRINT
    site["signature"] = lineage.sign_contribution(key, RUN_ID, ROUND, digest, FINGERPRINT)
    return message(content, node)


def _sites(keys: dict[int, Ed25519PrivateKey]) -> list[SiteInfo]:
    return [SiteInfo(f"site-{n}", n, lineage.public_key_hex(k), FINGERPRINT, "{}", num_examples=100)
            for n, k in keys.items()]


def test_digest_equals_update_digest_of_the_aggregated_bytes() -> None:
    rng = np.random.default_rng(0)
    replies = [message(reply_content(rng.standard_normal(DIM).astype(np.float32), 5,
                                     site_id=f"site-{n}"), n) for n in range(1, 6)]
    with ReplyDigests(workers=2) as digests:
        for r in replies:
            digests.submit(r)
        batch, rejected = batch_from_replies(
            replies, dim=DIM, site_of={n: f"site-{n}" for n in range(1, 6)}, policy=POLICY)
        assert not rejected and batch.n == 5
        for node, flat in zip(batch.node_ids, batch.updates, strict=True):
            expected = lineage.update_digest(flat)
            assert digests.digest_of(node, flat) == expected
            # the same value as digesting a fresh decoded copy of the reply
            copy = np.array(flat)
            assert lineage.update_digest(copy) == expected
            # ...but a digest is handed out only for the very memory it covers
            assert digests.digest_of(node, copy) is None


def test_malformed_and_duplicated_replies_have_no_digest_and_never_raise() -> None:
    good = reply_content(np.ones(DIM, np.float32), 5, site_id="site-1")
    no_update = reply_content(np.ones(DIM, np.float32), 5, site_id="site-2")
    del no_update["update"]
    wrong_dtype = reply_content(np.ones(DIM, np.float32), 5, site_id="site-3")
    wrong_dtype["update"] = ArrayRecord({"delta": Array(np.ones(DIM, np.float64))})
    garbage = reply_content(np.ones(DIM, np.float32), 5, site_id="site-4")
    garbage["update"] = ArrayRecord({"delta": Array(dtype="float32", shape=(DIM,),
                                                    stype="numpy.ndarray", data=b"\x93NUMPY junk")})
    as_config = reply_content(np.ones(DIM, np.float32), 5, site_id="site-5")
    as_config["update"] = ConfigRecord({"delta": "not an array"})
    replies = [message(good, 1), message(no_update, 2), message(wrong_dtype, 3),
               message(garbage, 4), message(as_config, 5), error_message("boom", 6),
               message(RecordDict(), 7), message(good, 8), message(good, 8)]
    with ReplyDigests() as digests:
        for r in replies:
            digests.submit(r)  # must not raise
        flat = decode_flat(good["update"]["delta"])  # type: ignore[index]
        assert digests.digest_of(1, flat) == lineage.update_digest(flat)
        for node in (2, 3, 4, 5, 6, 7, 8, 99):  # malformed, error, empty, duplicated, unknown
            assert digests.digest_of(node, flat) is None
    # screening still rejects the malformed ones, each with its reason
    _, rejected = batch_from_replies(replies[:7], dim=DIM,
                                     site_of={n: f"site-{n}" for n in range(1, 8)}, policy=POLICY)
    assert set(rejected) == {f"site-{n}" for n in range(2, 8)}
    assert all(reason for reason in rejected.values())


def test_verify_plain_with_digests_gives_the_same_outcome() -> None:
    rng = np.random.default_rng(1)
    keys = {n: Ed25519PrivateKey.generate() for n in range(1, 7)}
    deltas = {n: rng.standard_normal(DIM).astype(np.float32) for n in keys}
    replies = [_signed(deltas[n], n, keys[n]) for n in keys]
    forged = reply_content(deltas[5] + 1, 10, site_id="site-5")  # digest of other bytes
    forged["site"]["update_digest"] = replies[4].content["site"]["update_digest"]  # type: ignore[index]
    forged["site"]["signature"] = replies[4].content["site"]["signature"]  # type: ignore[index]
    forged["site"]["data_fingerprint"] = FINGERPRINT  # type: ignore[index]
    replies[4] = message(forged, 5)
    replies[5] = _signed(deltas[6], 6, keys[1])  # signed with another site's key
    layout = ModelLayout(("w",), ((DIM,),), ("float32",))
    sampled = _sites(keys)

    def verify(digests: ReplyDigests | None):  # type: ignore[no-untyped-def]
        return verify_plain(replies, sampled, layout=layout, policy=POLICY, run_id=RUN_ID,
                            server_round=ROUND, digests=digests)

    plain = verify(None)
    with ReplyDigests() as digests:
        for r in reversed(replies):  # arrival order does not matter
            digests.submit(r)
        fast = verify(digests)
    assert fast.contributions == plain.contributions
    assert fast.rejected == plain.rejected == {
        "site-5": "update digest does not match the update received",
        "site-6": "site signature does not verify"}
    assert [c["site_id"] for c in fast.contributions] == ["site-1", "site-2", "site-3", "site-4"]
    assert fast.batch.node_ids == plain.batch.node_ids


class _Double:
    """Not a Flower Grid: keeps its own send_and_receive."""

    def __init__(self, replies: list[Message]) -> None:
        self.replies = replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        return list(self.replies)


def test_send_and_receive_hands_each_reply_to_on_reply() -> None:
    replies = [message(reply_content(np.ones(4, np.float32), 1), n) for n in (1, 2, 3)]
    seen: list[Message] = []
    out = messaging.send_and_receive(_Double(replies), [], timeout=1.0,  # type: ignore[arg-type]
                                     on_reply=seen.append)
    assert out == replies and seen == replies
    assert messaging.send_and_receive(_Double(replies), [], timeout=1.0) == replies  # type: ignore[arg-type]


class _OnePerPull(Grid):
    """A Flower Grid double (in-memory kind: ``pull_interval``) releasing one reply per pull."""

    pull_interval = 0.0

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent.append(m)
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        return [Message(RecordDict(), reply_to=self.sent.pop(0))] if self.sent else []

    def set_run(self, run_id: int) -> None: ...  # type: ignore[override]
    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def create_message(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def get_node_ids(self) -> Iterable[int]:
        return [1, 2, 3]
    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise AssertionError("the helper polls through push/pull")


def test_on_reply_sees_each_reply_as_it_is_pulled() -> None:
    grid = _OnePerPull()
    seen: list[tuple[int, int]] = []  # (node, pulls so far) when on_reply ran
    msgs = [Message(RecordDict(), dst_node_id=n, message_type="train", group_id="1")
            for n in (1, 2, 3)]
    out = messaging.send_and_receive(grid, msgs, timeout=None,
                                     on_reply=lambda r: seen.append((r.metadata.src_node_id,
                                                                     grid.pulls)))
    assert [r.metadata.src_node_id for r in out] == [1, 2, 3]
    assert seen == [(1, 1), (2, 2), (3, 3)]  # each before the next pull

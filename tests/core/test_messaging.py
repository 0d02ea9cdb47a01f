"""`fedsilo.server.messaging.send_and_receive`: prompt reply polling, Flower's contract.

A Grid double whose replies become available at given times on a fake clock (no real
sleeping): the helper must return every reply, stop at the timeout with what arrived,
and poll on its 50 ms-doubling-to-500 ms schedule instead of Flower's fixed 3 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsilo.server import messaging, stopping


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    yield


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 6))
        self.now += s


class TimedGrid(Grid):
    """Node n's reply becomes available at ``ready[n]`` seconds (never if absent)."""

    def __init__(self, clock: Clock, ready: dict[int, float]) -> None:
        self.clock, self.ready = clock, ready
        self.sent: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, m in enumerate(messages):
            mid = f"m{i}"
            m.metadata.__dict__["_message_id"] = mid
            self.sent[mid] = m
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        out = []
        for mid in list(message_ids):
            m = self.sent[mid]
            at = self.ready.get(m.metadata.dst_node_id)
            if at is not None and at <= self.clock.now:
                out.append(Message(RecordDict(), reply_to=m))
                del self.sent[mid]
        return out

    # the rest of the Grid interface is not used by the helper
    def set_run(self, run_id: int) -> None: ...  # type: ignore[override]
    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def create_message(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def get_node_ids(self) -> Iterable[int]:
        return list(self.ready)
    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise AssertionError("the helper must not fall back to Flower's 3 s polling")


def _msgs(nodes: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train", group_id="1") for n in nodes]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(messaging.time, "monotonic", c.monotonic)
    monkeypatch.setattr(messaging.time, "sleep", c.sleep)
    return c


def test_collects_every_reply_soon_after_it_arrives(clock: Clock) -> None:
    grid = TimedGrid(clock, {1: 0.0, 2: 0.3, 3: 2.0})
    replies = messaging.send_and_receive(grid, _msgs([1, 2, 3]), timeout=60.0)
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3]
    assert [r.metadata.src_node_id for r in replies] == [1, 2, 3]  # arrival order
    # 50 ms, doubling, capped at 500 ms: the last reply (at 2.0 s) is collected at 2.25 s
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert clock.now == pytest.approx(2.25) and grid.pulls == 8


def test_stops_at_the_timeout_with_the_replies_so_far(clock: Clock) -> None:
    grid = TimedGrid(clock, {1: 0.1, 2: 0.2})  # node 3 never answers
    replies = messaging.send_and_receive(grid, _msgs([1, 2, 3]), timeout=1.0)
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2]
    assert clock.now == pytest.approx(1.0)  # the last wait is cut to the deadline
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.4, 0.25]


def test_all_replies_at_once_need_no_sleep(clock: Clock) -> None:
    grid = TimedGrid(clock, {1: 0.0, 2: 0.0})
    assert len(messaging.send_and_receive(grid, _msgs([1, 2]), timeout=None)) == 2
    assert clock.sleeps == [] and grid.pulls == 1


def test_in_memory_grids_are_polled_every_pull_interval(clock: Clock) -> None:
    """Flower's simulation grid polls memory every `pull_interval` (10 ms once tuned):
    the helper keeps that interval rather than backing off to 500 ms."""

    class InMemory(TimedGrid):
        pull_interval = 0.01

    grid = InMemory(clock, {1: 0.0, 2: 0.045})
    replies = messaging.send_and_receive(grid, _msgs([1, 2]), timeout=5.0)
    assert [r.metadata.src_node_id for r in replies] == [1, 2]
    assert clock.sleeps == [0.01] * 5 and grid.pulls == 6


def test_a_stop_request_ends_the_wait_at_the_next_poll(clock: Clock) -> None:
    """SIGINT/SIGTERM set `STOP`: a round waiting for a site that never answers (10 min
    timeout) ends at the next poll with `RunInterrupted`."""
    grid = TimedGrid(clock, {1: 0.0})  # node 2 never answers
    real_sleep = clock.sleep

    def sleep(s: float) -> None:
        real_sleep(s)
        if clock.now >= 1.0:
            stopping.request_stop()

    clock.sleep = sleep  # type: ignore[method-assign]
    messaging.time.sleep = sleep  # type: ignore[assignment]  # the fixture restores it
    try:
        with pytest.raises(stopping.RunInterrupted):
            messaging.send_and_receive(grid, _msgs([1, 2]), timeout=600.0)
        assert 1.0 <= clock.now <= 1.6  # one more poll (<= 500 ms) after the request
        with pytest.raises(stopping.RunInterrupted):  # and no new exchange starts
            messaging.send_and_receive(grid, _msgs([1]), timeout=600.0)
    finally:
        stopping.STOP.clear()


def test_non_grid_doubles_keep_their_own_send_and_receive() -> None:
    class Double:
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None):
            return iter([("echo", timeout)])

    assert messaging.send_and_receive(Double(), [], timeout=3.0) == [("echo", 3.0)]  # type: ignore[arg-type]

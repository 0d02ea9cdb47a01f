"""In-memory grids (Flower's simulation engine): the reply poll backs off with the number
of pending replies, so a 1,000-site handshake does not keep Flower's link state busy, and
starts over from ``pull_interval`` whenever replies arrive (a fake clock, no sleeping)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsilo.server import messaging


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


class InMemory(Grid):
    """Node n's reply is in the link state from ``ready[n]`` seconds on."""

    pull_interval = 0.01

    def __init__(self, clock: Clock, ready: dict[int, float]) -> None:
        self.clock, self.ready = clock, ready
        self.sent: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent[f"m{i}"] = m
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        out = []
        for mid in list(message_ids):
            m = self.sent[mid]
            if self.ready[m.metadata.dst_node_id] <= self.clock.now + 1e-9:
                out.append(Message(RecordDict(), reply_to=m))
                del self.sent[mid]
        return out

    def set_run(self, run_id: int) -> None: ...  # type: ignore[override]
    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def create_message(self, *a, **k):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def get_node_ids(self) -> Iterable[int]:
        return list(self.ready)
    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(messaging.time, "monotonic", c.monotonic)
    monkeypatch.setattr(messaging.time, "sleep", c.sleep)
    return c


def _msgs(nodes: Iterable[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train", group_id="1") for n in nodes]


def test_the_cap_grows_with_pending_replies() -> None:
    assert messaging.in_memory_cap(0.01, 10) == 0.01
    assert messaging.in_memory_cap(0.01, 100) == pytest.approx(0.02)
    assert messaging.in_memory_cap(0.01, 1000) == pytest.approx(0.2)
    assert messaging.in_memory_cap(0.01, 100_000) == messaging.IN_MEMORY_MAX_POLL_S


def test_a_large_exchange_backs_off_and_restarts_when_replies_come(clock: Clock) -> None:
    ready = {n: 10.0 for n in range(1000)}  # 1,000 sites answer after 10 s ...
    ready[1000] = 10.5  # ... and one half a second later
    grid = InMemory(clock, ready)
    replies = messaging.send_and_receive(grid, _msgs(ready), timeout=60.0)
    assert len(replies) == 1001
    assert max(clock.sleeps) == pytest.approx(0.2)  # 1,001 pending: at most 0.2 s apart
    # ~55 polls of 1,001 ids in the first 10 s (not 1,000), then ~50 of one id
    assert grid.pulls < 120
    # once 1,000 replies came in, one is pending: polled every 10 ms again
    assert clock.now == pytest.approx(10.5, abs=0.2)
    assert clock.sleeps[-3:] == [0.01, 0.01, 0.01]


def test_ten_sites_keep_the_10_ms_poll(clock: Clock) -> None:
    grid = InMemory(clock, {n: 0.1 * n for n in range(10)})
    replies = messaging.send_and_receive(grid, _msgs(range(10)), timeout=5.0)
    assert len(replies) == 10 and set(clock.sleeps) == {0.01}


class Counting(InMemory):
    """Records how many messages are in flight at each push."""

    def __init__(self, clock: Clock, ready: dict[int, float]) -> None:
        super().__init__(clock, ready)
        self.in_flight: list[int] = []
        self.count = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            mid = f"m{self.count}"
            self.count += 1
            m.metadata.__dict__["_message_id"] = mid
            self.sent[mid] = m
            ids.append(mid)
        self.in_flight.append(len(self.sent))
        return ids


def test_a_window_keeps_at_most_that_many_messages_in_flight(clock: Clock) -> None:
    # site n answers 10 ms after it is asked at the earliest; every site is asked, once
    ready = {n: 0.001 * n for n in range(250)}
    grid = Counting(clock, ready)
    replies = messaging.send_and_receive(grid, _msgs(ready), timeout=60.0, window=100)
    assert sorted(r.metadata.src_node_id for r in replies) == list(range(250))
    assert grid.count == 250 and max(grid.in_flight) <= 100 and len(grid.in_flight) > 2


def test_a_window_still_honours_the_timeout(clock: Clock) -> None:
    ready = {n: (0.0 if n < 5 else 1e9) for n in range(20)}  # 15 sites never answer
    grid = Counting(clock, ready)
    replies = messaging.send_and_receive(grid, _msgs(ready), timeout=1.0, window=10)
    assert sorted(r.metadata.src_node_id for r in replies) == [0, 1, 2, 3, 4]
    assert clock.now == pytest.approx(1.0)

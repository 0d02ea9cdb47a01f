"""Plain and SecAgg+ federations run side by side, one round each in turn (`interleaved`).

So round r of every federation runs within a second or so of the others' round r, in the
same state of the shared host; a short X25519 probe before and after each round
(`host_probe`) tells which state that was (`quiet`), and the handlers' CPU time per round
is kept per federation (`RoundTimes`). Used by `bench_secagg_rounds.py`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fedsilo.client.app as client_app
import fedsilo.client.secagg_handler as secagg_handler
import fedsilo.client.update as client_update
import fedsilo.privacy.secagg.crypto as secagg_crypto
from fedsilo.server.config import RunConfig
from fedsilo.simulations.runner import run_federation

# handler CPU seconds per round-robin worker (thread name) and label, accumulated while
# that worker's `_ON` entry is set (rounds 2..R-1 only)
_CPU: dict[str, dict[str, float]] = {}
_ON: dict[str, bool] = {}
_PROBE_KEY = secagg_crypto.X25519PrivateKey.generate()
_PROBE_PEER = secagg_crypto.X25519PrivateKey.generate().public_key()


@contextmanager
def _timed(module: Any, name: str, label: str) -> Iterator[None]:
    """Accumulate the calling thread's CPU time of ``module.name`` calls under ``label``."""
    orig: Callable[..., Any] = getattr(module, name)

    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0 = time.thread_time()
        try:
            return orig(*args, **kwargs)
        finally:
            worker = threading.current_thread().name
            if _ON.get(worker):
                cpu = _CPU.setdefault(worker, {})
                cpu[label] = cpu.get(label, 0.0) + time.thread_time() - c0

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, orig)


def host_probe(reps: int = 100) -> float:
    """Microseconds per X25519 exchange right now (about 5 ms of work).

    The shared host this runs on switches, for seconds to tens of seconds at a time,
    between a quiet state and a contended one in which every core runs about 1.4x
    slower (38-42 against 53-61 us per exchange). A probe just before and just after a
    round tells which state the round ran in.
    """
    t0 = time.perf_counter()
    for _ in range(reps):
        _PROBE_KEY.exchange(_PROBE_PEER)
    return (time.perf_counter() - t0) / reps * 1e6


@dataclass
class RoundTimes:
    """Rounds 2..R-1 of one run: wall seconds, CPU seconds of the federation's thread, the
    host probe (us) just before and after each, and the handlers' CPU seconds per round
    (label -> seconds)."""

    wall: list[float] = field(default_factory=list)
    thread_cpu: list[float] = field(default_factory=list)
    probes: list[tuple[float, float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


class _Baton:
    """Lets one of several threads run at a time, in turn."""

    def __init__(self, count: int) -> None:
        self._cond = threading.Condition()
        self._turn = 0
        self._live = list(range(count))

    def wait(self, i: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == i)

    def pass_on(self, i: int, *, finished: bool = False) -> None:
        with self._cond:
            pos = self._live.index(i)
            if finished:
                self._live.remove(i)
            if self._live:
                self._turn = self._live[(pos + (0 if finished else 1)) % len(self._live)]
            self._cond.notify_all()


def interleaved(configs: list[RunConfig]) -> list[RoundTimes]:
    """Run the federations side by side, one round at a time each, in turn.

    Each federation runs in its own thread, but only one thread works at a time: after
    each round a federation hands over to the next one and waits for its turn again. So
    round r of every federation runs within a second or so of the others' round r, in
    the same host state, rather than a whole run apart. A round's time is measured from
    the moment its federation got the turn to the end of the round (the waiting is not
    counted); the host probe runs outside that window.
    """
    baton = _Baton(len(configs))
    out = [RoundTimes() for _ in configs]
    errors: list[BaseException] = []

    def worker(i: int, config: RunConfig) -> None:
        name = threading.current_thread().name
        times, ends = out[i], [0]
        baton.wait(i)
        before, start, cpu0 = host_probe(), time.perf_counter(), time.thread_time()

        def on_round(_s: object) -> None:
            nonlocal before, start, cpu0
            wall, cpu = time.perf_counter() - start, time.thread_time() - cpu0
            after = host_probe()
            ends[0] += 1
            if 2 <= ends[0] <= config.rounds - 1:
                times.wall.append(wall)
                times.thread_cpu.append(cpu)
                times.probes.append((before, after))
            _ON[name] = 1 <= ends[0] < config.rounds - 1  # the next round is timed
            baton.pass_on(i)
            baton.wait(i)
            before, start, cpu0 = host_probe(), time.perf_counter(), time.thread_time()

        try:
            run_federation(config, engine="inprocess", on_round=on_round)
        except BaseException as exc:  # reported by the caller once every thread is done
            errors.append(exc)
        finally:
            _ON[name] = False
            baton.pass_on(i, finished=True)

    _CPU.clear()
    threads = [threading.Thread(target=worker, args=(i, c), name=f"fed{i}")
               for i, c in enumerate(configs)]
    with _timed(client_update, "local_delta", "train"), \
            _timed(client_app, "_train_reply", "plain_site"), \
            _timed(secagg_handler, "_handle", "secagg_site"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for i, (times, config) in enumerate(zip(out, configs, strict=True)):
        times.cpu = {k: v / (config.rounds - 2) for k, v in _CPU.get(f"fed{i}", {}).items()}
    return out


def quiet(probes: tuple[float, float], floor: float) -> bool | None:
    """True if both probes of a round saw the quiet host (within 15% of the fastest
    probe of the run), False if both saw the contended one, None if it changed."""
    before, after = (p <= 1.15 * floor for p in probes)
    return before if before == after else None

"""Keep a run's long-lived objects out of Python's cyclic garbage collector.

A full (generation 2) collection walks every container object in the process. Once
torch and Flower are imported and a round has run (which imports more of both lazily)
that is over 400,000 objects, and torch's are slow to walk: importing torch alone makes
a full collection take about 90 ms, and in the SecAgg+ round benchmark at 100 sites one
took 200-450 ms. The collector runs a full pass whenever enough objects have survived
since the last one, so a run that allocates many small objects (a SecAgg+ round at 100
sites: key tables, records and messages for 300 exchanges) pays such a pause every few
rounds, inside whatever code happened to allocate.

`gc.freeze` moves every object tracked at that moment to a permanent generation that
collections skip, in constant time; `gc.unfreeze` puts them back. The server freezes
after its first round (modules, the loaded framework, the sites' models: they live as
long as the run) and unfreezes when the run ends. Objects created later are collected as
usual; a reference cycle that was already garbage at the freeze waits for the end of
the run.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holders = 0  # runs in this process currently holding a freeze


class FrozenObjects:
    """One run's hold on the freeze (`freeze` once it has warmed up, `release` at its end).

    Runs in one process (nested or in threads) share the freeze: the objects are
    unfrozen when the last holder releases it.
    """

    def __init__(self) -> None:
        self.held = False

    def freeze(self) -> None:
        """Freeze every object tracked now; later calls by this holder do nothing (what a
        run creates after its first round is collected as usual, cycles included)."""
        global _holders
        with _lock:
            if self.held:
                return
            gc.freeze()  # also picks up what this run created since another run's freeze
            self.held = True
            _holders += 1

    def release(self) -> None:
        """Give up this run's hold; the last holder unfreezes the objects."""
        global _holders
        with _lock:
            if not self.held:
                return
            self.held = False
            _holders -= 1
            if _holders == 0:
                gc.unfreeze()

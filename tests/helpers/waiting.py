"""Waiting on events, and timeouts that scale with how fast this machine starts a site.

Tests wait for what they need (a record in the chain, a port, a process gone) with
`wait_for`, never for a fixed time. Where a timeout is part of what is tested (a
federation's round timeout), it is derived from `Startup`: how long this machine,
right now, takes to start the processes the deployment runtime starts for every
message. A loaded CI machine then gets proportionally longer timeouts instead of
failures, and an idle one keeps the short timeouts that keep the suite fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

REFERENCE_STARTUP_S = 4.0
"""`measure_startup` on an idle 2-core machine (3 concurrent starts took 3.6-4.2 s)."""
MAX_FACTOR = 15.0
"""Cap of `Startup.factor`: past this the machine is too slow for any test to mean much."""

# What the deployment runtime does for every message, minus Flower's own connection:
# start Python, import the ClientApp, build the site (torch, the bundled dataset).
_SITE_START = ("from fedsilo.simulations.flower_app import bundled_trainer; "
               "bundled_trainer('digits', 0, 3)")


def wait_for(predicate: Callable[[], T], what: str, timeout: float, *, poll: float = 0.5,
             state: Callable[[], object] | None = None) -> T:
    """Poll ``predicate`` until it returns a true value, and return that value.

    Polls after 50 ms, then backs off to every ``poll`` s. ``timeout`` is a safety net,
    not a guess of how long the event takes: on expiry the AssertionError names
    ``what`` was awaited, for how long, and (``state``) what was seen last.
    """
    start = time.monotonic()
    wait = min(0.05, poll)
    while True:
        value = predicate()
        if value:
            return value
        waited = time.monotonic() - start
        if waited >= timeout:
            seen = "" if state is None else f"; last seen: {state()}"
            raise AssertionError(f"timed out after {waited:.1f} s waiting for {what}{seen}")
        time.sleep(min(wait, timeout - waited))
        wait = min(2 * wait, poll)


@dataclass(frozen=True)
class Startup:
    """How long this machine takes to start sites, and the resulting timeout scale.

    Attributes
    ----------
    seconds : wall time of `measure_startup` (``concurrent`` site processes at once).
    concurrent : how many were started at once.
    """

    seconds: float
    concurrent: int

    @property
    def factor(self) -> float:
        """``seconds`` relative to an idle 2-core machine; never below 1."""
        return min(MAX_FACTOR, max(1.0, self.seconds / REFERENCE_STARTUP_S))

    def scaled(self, base: float) -> float:
        """``base`` seconds (right on an idle machine) scaled to this one."""
        return base * self.factor

    def describe(self) -> str:
        return (f"{self.concurrent} site start-ups took {self.seconds:.1f} s "
                f"(idle reference {REFERENCE_STARTUP_S:.1f} s, timeout factor {self.factor:.2f})")


def measure_startup(concurrent: int = 3, timeout: float = 600.0) -> Startup:
    """Start ``concurrent`` site processes at once, as a SuperNode's ClientApps do; time them.

    The wall time until the last one has built its site is what a federation's first
    round needs before any reply can arrive. A process that fails is an AssertionError
    with its error output (the network tests could not pass either).
    """
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", _SITE_START], env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(concurrent)]
    try:
        errors = [p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))[1]
                  for p in procs]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"start-up measurement: {concurrent} site processes did not "
                             f"finish within {timeout:.0f} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.monotonic() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            tail = " | ".join(err.strip().splitlines()[-3:])
            raise AssertionError(f"start-up measurement: a site process exited with "
                                 f"{p.returncode}: {tail}")
    return Startup(seconds=seconds, concurrent=concurrent)

"""Stopping a command cleanly on SIGINT/SIGTERM, and cleaning up after one that was killed.

(A leaf module: the simulation engine, the round loop and the deployment commands of both
the server and the sites use it; `fedsilo.server.stopping` re-exports it.)

Signals (`SignalGuard`): the first SIGINT or SIGTERM sets `STOP`. The round loop checks it
between rounds and while it waits for replies (`fedsilo.server.messaging.send_and_receive`),
raises `RunInterrupted`, closes the lineage chain with ``interrupted`` (the last checkpoint
stays resumable) and the command exits. A second signal does not wait: it kills the child
processes the command recorded and leaves with ``os._exit``.

PID records (`PidRecord`, ``<dir>/pids.json``): every process a command starts (Ray's GCS,
raylet, agents and workers; Flower's SuperLink or SuperNode) is recorded with its start time
and command line. A command that is SIGKILLed cannot stop its children; the next start with
the same directory (``--resume``, ``server start``, ``site start``) kills what is still alive
*and* still the recorded process (same start time), so a reused PID is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from .errors import FedsiloError

STOP = threading.Event()
"""Set by the first SIGINT/SIGTERM (or `request_stop`): the run should end after closing its chain."""

PIDS_NAME = "pids.json"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_START_TIME_SLACK_S = 0.05  # psutil derives start times from clock ticks: allow rounding


class RunInterrupted(Exception):
    """The operator stopped the run (SIGINT/SIGTERM); its chain is closed as ``interrupted``.

    ``run_dir`` is set by whoever knows it (the simulation engine), for the resume hint.
    """

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


def request_stop() -> None:
    """Ask the current run to stop (what the first signal does)."""
    STOP.set()


def check_stop() -> None:
    """Raise `RunInterrupted` if a stop was requested."""
    if STOP.is_set():
        raise RunInterrupted(f"interrupted by {_GUARD.signal_name if _GUARD else 'the operator'}")


# ------------------------------------------------------------------ signals
class SignalGuard:
    """Context manager: SIGINT/SIGTERM handlers for one command (main thread only).

    Parameters
    ----------
    raise_first : also raise `KeyboardInterrupt` in the main thread on the first signal, so
        that it leaves whatever it waits in (Flower's simulation engine, which then stops
        Ray; a `Supervisor` waiting on its processes) while the round loop sees `STOP`.
    pids : the command's PID record; the second signal SIGKILLs what it lists.
    """

    def __init__(self, *, raise_first: bool = False, pids: PidRecord | None = None) -> None:
        self.raise_first = raise_first
        self.pids = pids
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "the operator"

    def __enter__(self) -> SignalGuard:
        global _GUARD
        STOP.clear()
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._old[sig] = signal.getsignal(sig)
            self.install()
        _GUARD = self
        return self

    def install(self) -> None:
        """(Re)install the handlers: libraries such as Ray replace the SIGTERM handler."""
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        global _GUARD
        _GUARD = None
        for sig, old in self._old.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, old)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: leave now, taking the children along
            try:
                if self.pids is not None:
                    self.pids.kill_all(grace=0.0)
                _kill_descendants()  # any not recorded yet
            finally:
                os._exit(128 + signum)
        self.signum = signum
        STOP.set()
        print(f"fedsilo: {signal.Signals(signum).name}: stopping (send it again to exit at once)",
              file=sys.stderr, flush=True)
        if self.raise_first:
            raise KeyboardInterrupt


_GUARD: SignalGuard | None = None


def reinstall_handlers() -> None:
    """Put the active guard's handlers back (after a library replaced them)."""
    if _GUARD is not None:
        _GUARD.install()


def active_guard() -> SignalGuard | None:
    return _GUARD


# ------------------------------------------------------------------ PID records
def _describe(proc: psutil.Process) -> dict[str, Any] | None:
    try:
        with proc.oneshot():
            return {"pid": proc.pid, "create_time": proc.create_time(), "name": proc.name(),
                    "cmdline": proc.cmdline()[:8]}
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _same_process(entry: dict[str, Any]) -> psutil.Process | None:
    """The live process ``entry`` recorded, or None (gone, or its PID now names another)."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        if abs(proc.create_time() - float(entry["create_time"])) > _START_TIME_SLACK_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
        return None


class LeftoverOwnerAlive(FedsiloError, RuntimeError):
    """The command that recorded the PIDs is still running (not a leftover: refuse to start)."""


class PidRecord:
    """``<dir>/pids.json``: this command and the processes it started (see module docstring).

    Parameters
    ----------
    directory : the run directory (simulate) or state / log directory (server, site).
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / PIDS_NAME
        self.owner = _describe(psutil.Process())
        self.entries: dict[int, dict[str, Any]] = {}

    # -- recording
    def add(self, pids: Iterable[int]) -> None:
        """Record ``pids`` (and nothing twice), then rewrite the file."""
        changed = False
        for pid in pids:
            if pid in self.entries:
                continue
            try:
                entry = _describe(psutil.Process(pid))
            except psutil.NoSuchProcess:
                entry = None
            if entry is not None:
                self.entries[pid] = entry
                changed = True
        if changed or not self.path.exists():
            self._write()

    def add_children(self) -> None:
        """Record every current descendant of this process."""
        self.add(p.pid for p in psutil.Process().children(recursive=True))

    def add_tree(self, pid: int) -> None:
        """Record ``pid`` and its current descendants."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.add([pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))])

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{PIDS_NAME}.{os.getpid()}")
        tmp.write_text(json.dumps({"owner": self.owner, "processes": list(self.entries.values())},
                                  indent=1))
        os.replace(tmp, self.path)

    # -- stopping
    def kill_all(self, grace: float = 3.0) -> list[int]:
        """SIGTERM every recorded process still alive (and its descendants), SIGKILL after ``grace``."""
        # list() copies in one step: the recording thread may add entries meanwhile
        return _terminate(list(self.entries.values()), grace)

    def finish(self, grace: float = 3.0) -> list[int]:
        """End of the command: stop what is left of the recorded processes, remove the file."""
        killed = self.kill_all(grace)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return killed

    # -- the next start
    @staticmethod
    def clean_leftovers(directory: Path, grace: float = 3.0) -> list[int]:
        """Kill what a killed command recorded in ``directory``; return the PIDs killed.

        Raises `LeftoverOwnerAlive` when the recording command itself still runs (its
        children are not leftovers then: two commands on one directory is the error).
        """
        path = Path(directory) / PIDS_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable: nothing can be matched safely
            return []
        owner = data.get("owner") or {}
        if owner.get("pid") != os.getpid() and _same_process(owner) is not None:
            raise LeftoverOwnerAlive(
                f"{directory} is in use by a running fedsilo command (pid {owner['pid']})")
        killed = _terminate(list(data.get("processes") or []), grace)
        path.unlink(missing_ok=True)
        return killed


def _terminate(entries: list[dict[str, Any]], grace: float) -> list[int]:
    """Stop the processes ``entries`` recorded (verified by start time) and their descendants."""
    procs: dict[int, psutil.Process] = {}
    for entry in entries:
        proc = _same_process(entry)
        if proc is None:
            continue
        procs[proc.pid] = proc
        with contextlib.suppress(psutil.Error):  # children of a verified process are its own
            procs.update({c.pid: c for c in proc.children(recursive=True)})
    procs.pop(os.getpid(), None)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
    if grace <= 0:  # the caller exits at once: no waiting
        return sorted(procs)
    _gone, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=2.0)
    return sorted(procs)


def _kill_descendants() -> None:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()

"""Starting and stopping Flower's processes (SuperLink, SuperNodes) by PID.

Every process is started in its own session (``start_new_session=True``) with its
output in a log file, and stopped by PID: SIGTERM to the process, its process group
and every descendant found under ``/proc`` (Flower starts SuperExec and app processes
in sessions of their own), then SIGKILL after a grace period. `Supervisor` stops
everything it started on exit, on Ctrl-C and on SIGTERM (a second signal SIGKILLs at
once), and records the PIDs in ``<log_dir>/pids.json`` so that the next start with the
same directory kills what a SIGKILLed command left running (`fedsilo.common.stopping`).
Used by ``fedsilo server`` (`fedsilo.server.deploy`) and ``fedsilo site``
(`fedsilo.client.deploy`) alike; `fedsilo.server.deploy_procs` re-exports it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsilo.common.stopping import LeftoverOwnerAlive, PidRecord, SignalGuard

from .errors import FedsiloError

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR = re.compile(r"error|fail|refus|denied|invalid|unable|not found", re.IGNORECASE)
_NOISE = re.compile(r"Exit Code:|retrying|handshake error detected", re.IGNORECASE)


class DeployError(FedsiloError, RuntimeError):
    """A deployment step failed (one line: what, where, and the cause when known)."""


def flower_bin(name: str) -> Path:
    """Path of a Flower executable installed next to this Python (``flower-superlink``...)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DeployError(f"{name} not found next to {sys.executable}; is flwr installed?")
    return path


def child_env(flwr_home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus telemetry off and, when given, ``FLWR_HOME``.

    Parameters
    ----------
    flwr_home : directory for the ``flwr`` CLI's config and state (None: inherited).
    extra : more variables to set.
    """
    env = dict(os.environ)
    env.update(QUIET_ENV)
    # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name: make sure
    # the ones next to this Python come first even when the venv is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


# ------------------------------------------------------------------ ports
def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (host, port), or it cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(flag: str, host: str, port: int) -> None:
    """`DeployError` naming ``flag`` when the port is out of range or already in use."""
    if not 0 < port < 65536:
        raise DeployError(f"{flag}: port must be in 1..65535, got {port}")
    if port_in_use(host, port):
        raise DeployError(f"{flag}: {host}:{port} is already in use")


# ------------------------------------------------------------------ processes
def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


class ManagedProcess:
    """One child process in its own session, logging to a file, stopped by PID.

    Parameters
    ----------
    name : label used in messages (``superlink``, ``site hospital-a``...).
    argv : the command line.
    log_path : file that receives the process's stdout and stderr.
    env : the process's environment (see `child_env`).
    cwd : its working directory (None: inherited).
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env), cwd=cwd, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 2) -> str:
        """The log's last error lines (or its last lines), ANSI colours removed, joined by ' | '."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        clean = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
        clean = [ln for ln in clean if ln]
        errors = [ln for ln in clean if _ERROR.search(ln) and not _NOISE.search(ln)]
        return " | ".join((errors or clean)[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process, its group and its descendants; SIGKILL what is left after ``grace`` s."""
        tree = [self.pid, *descendants(self.pid)]
        if self.running():
            _signal_group(self.pid, signal.SIGTERM)
        for pid in tree:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.popen.poll()
            if not any(_alive(p) for p in tree):
                break
            time.sleep(0.05)
        tree += [p for p in descendants(self.pid) if p not in tree]
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGKILL)
        for pid in tree:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)


def wait_for_port(proc: ManagedProcess, host: str, port: int, timeout: float) -> None:
    """Wait until ``proc`` listens on (host, port); `DeployError` if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise DeployError(
                f"{proc.name} exited with code {proc.popen.returncode}: {proc.log_tail()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"{proc.name} did not listen on {host}:{port} within {timeout:.0f} s")


def clean_leftovers(log_dir: Path) -> list[int]:
    """Kill what a SIGKILLed command recorded in ``log_dir/pids.json`` (its SuperLink or
    SuperNode would hold the port); `DeployError` if that command still runs.

    Start commands call it before their port checks; `Supervisor` calls it too.
    """
    try:
        killed = PidRecord.clean_leftovers(Path(log_dir))
    except LeftoverOwnerAlive as exc:
        raise DeployError(str(exc)) from None
    if killed:
        print(f"fedsilo: stopped {len(killed)} processes a killed command left running "
              f"(pids {', '.join(map(str, killed))})", file=sys.stderr, flush=True)
    return killed


class Supervisor:
    """Starts processes and stops all of them on exit, Ctrl-C or SIGTERM (context manager).

    Parameters
    ----------
    log_dir : where each process's log file goes (``<name>.log``), and ``pids.json``.

    Entering kills what a killed command recorded in ``log_dir`` (`DeployError` if that
    command still runs); the first SIGINT/SIGTERM raises `KeyboardInterrupt` in the main
    thread (the caller's ``with`` then stops everything), a second one SIGKILLs the
    recorded processes and exits at once.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.procs: list[ManagedProcess] = []
        self.pids = PidRecord(self.log_dir)
        self._guard = SignalGuard(raise_first=True, pids=self.pids)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str],
              cwd: Path | None = None) -> ManagedProcess:
        """Start ``argv`` as ``name``; its log is ``log_dir/<name>.log``."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        proc = ManagedProcess(name, argv, self.log_dir / f"{safe}.log", env, cwd)
        self.procs.append(proc)
        self.pids.add_tree(proc.pid)
        return proc

    def stop_all(self) -> None:
        """Stop every process started, newest first."""
        while self.procs:
            self.procs.pop().stop()

    def wait(self) -> ManagedProcess:
        """Block until one of the processes exits; return it (Ctrl-C raises KeyboardInterrupt)."""
        while True:
            for proc in self.procs:
                if not proc.running():
                    return proc
            time.sleep(0.5)

    def __enter__(self) -> Supervisor:
        clean_leftovers(self.log_dir)
        self._guard.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_all()
            self.pids.finish()
        finally:
            self._guard.__exit__()

"""Process helpers shared by the deployment tests: environment, start, stop by PID.

Every process runs in its own session with telemetry off and a temporary FLWR_HOME;
`Procs` stops everything it started (and their descendants) by PID at teardown.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from helpers.waiting import Startup, wait_for

from fedsilo.server.deploy_procs import (
    ManagedProcess,
    child_env,
    descendants,
    free_port,
    wait_for_port,
)

BIN = Path(sys.executable).parent
TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent

__all__ = ["BIN", "REPO", "Procs", "env_for", "free_port", "free_ports", "wait_for", "wait_for_port",
           "wait_until"]


def env_for(flwr_home: Path) -> dict[str, str]:
    """Environment of every test process: telemetry off, FLWR_HOME in tmp, tests importable."""
    env = child_env(flwr_home)
    env["NO_COLOR"] = "1"
    # Flower's SuperExec checks for a ClientApp/ServerApp to start once a second by
    # default; each message of a round waits for that poll, so poll faster here.
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def wait_until(pred: Callable[[], object], timeout: float, what: str, poll: float = 0.5) -> None:
    """Poll ``pred`` until it holds; AssertionError naming ``what`` after ``timeout`` s
    (`helpers.waiting.wait_for` with the arguments in this module's older order)."""
    wait_for(pred, what, timeout, poll=poll)


class Procs:
    """Starts processes for one test and stops all of them (by PID) in `stop_all`."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: Sequence[str | Path], cwd: Path | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, [str(a) for a in argv], self.log_dir / f"{name}.log", self.env, cwd)
        self.started.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        """Stop every process started (newest first); return PIDs still alive afterwards."""
        pids: list[int] = []
        for proc in self.started:
            pids += [proc.pid, *descendants(proc.pid)]
        while self.started:
            self.started.pop().stop(grace=8.0)
        return [p for p in pids if _alive(p)]


def local_procs(tmp_path: Path) -> tuple[Path, Procs]:
    """A fresh Flower home (``tmp_path/flwr-home``) and a `Procs` with its environment,
    logging to ``tmp_path/logs``: the set-up every loopback federation test starts with."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    return home, Procs(tmp_path / "logs", env_for(home))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def flwr_json(env: dict[str, str], *args: str, timeout: float = 120) -> dict:
    """Run the `flwr` CLI with ``--format json`` and return its JSON answer."""
    import json
    import subprocess

    res = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], capture_output=True,
                         text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout[res.stdout.find("{"):])


def start_insecure_federation(tmp_path: Path, procs: Procs, home: Path, n_nodes: int,
                              name: str = "test", startup: Startup | None = None) -> list[ManagedProcess]:
    """An insecure SuperLink on 127.0.0.1 and ``n_nodes`` SuperNodes (``partition-id`` i),
    named ``name`` in the `flwr` config under ``home``; waits until all nodes are online
    (safety nets scaled by ``startup`` when given)."""
    import tomli_w

    scale = 1.0 if startup is None else startup.factor
    link_port, *node_ports = free_ports(1 + n_nodes)
    (home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": name, name: {"address": f"127.0.0.1:{link_port}", "insecure": True}}}
    ))
    link = procs.start("superlink", [
        BIN / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
        "--database", tmp_path / "state.db", "--disable-runtime-dependency-installation",
    ], cwd=tmp_path)
    wait_for_port(link, "127.0.0.1", link_port, timeout=60 * scale)
    nodes = [procs.start(f"supernode-{i}", [
        BIN / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
        "--host", "127.0.0.1", "--port", str(port), "--node-config", f"partition-id={i}",
    ], cwd=tmp_path) for i, port in enumerate(node_ports)]
    online: list[int] = []

    def all_online() -> bool:
        # each question is a `flwr` process: poll=2 keeps a loaded machine from drowning
        online[:] = [sum(n["status"] == "online"
                         for n in flwr_json(procs.env, "supernode", "ls", name)["nodes"])]
        return online[0] == n_nodes

    wait_for(all_online, f"{n_nodes} SuperNodes online", 60 * scale, poll=2.0,
             state=lambda: f"{online[-1] if online else 0} online; {exited_summary(nodes)}")
    return nodes


def exited_summary(procs: Sequence[ManagedProcess]) -> str:
    gone = [f"{p.name} exited {p.popen.returncode}: {p.log_tail()}" for p in procs if not p.running()]
    return "; ".join(gone) or "none exited"


def chain_types(run_dir: Path) -> list[str]:
    """Record types in ``run_dir``'s lineage chain so far (empty while it is not readable:
    the ServerApp process may be creating it or be inside a transaction)."""
    from fedsilo.lineage import read_chain

    db = run_dir / "lineage.sqlite"
    if not db.exists():
        return []
    try:
        return [r["type"] for r in read_chain(db)]
    except Exception:  # mid-write: the next poll sees it committed
        return []


def running_serverapps(superlink: ManagedProcess) -> list[int]:
    """PIDs of the live (not zombie) ``flwr-serverapp`` processes under ``superlink``."""
    out = []
    for pid in descendants(superlink.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-serverapp" in cmd and _alive(pid):
            out.append(pid)
    return out


def stop_dead_run(env: dict[str, str], federation: str, run_id: int | str,
                  superlink: ManagedProcess, timeout: float) -> None:
    """Once the (killed) ServerApp process of the only run is gone, stop the run in Flower.

    Flower marks a run whose ServerApp died finished only after its heartbeat lapses
    (about a minute); the process being gone is the event, `flwr stop` the shortcut.
    """
    import subprocess

    wait_for(lambda: not running_serverapps(superlink), "the killed ServerApp process to be gone",
             timeout, poll=0.2)
    res = subprocess.run([str(BIN / "flwr"), "stop", str(run_id), federation], capture_output=True,
                         text=True, env=env, timeout=timeout)
    # on a very slow machine Flower's heartbeat may have finished the run first: then
    # `flwr stop` refuses, and that is as good
    assert res.returncode == 0 or run_status(env, federation, run_id).startswith("finished"), (
        res.stdout + res.stderr)


def run_status(env: dict[str, str], federation: str, run_id: int | str) -> str:
    """Flower's status of run ``run_id`` (``running``, ``finished:completed``...)."""
    return str(flwr_json(env, "ls", federation, "--run-id", str(run_id))["runs"][0]["status"])


def wait_run_finished(env: dict[str, str], federation: str, run_id: int | str, run_dir: Path,
                      timeout: float) -> str:
    """Wait until Flower reports run ``run_id`` finished (its ServerApp process has exited,
    every output written) and return the status.

    The cheap event, the chain's closing record, is polled often; Flower itself (one `flwr`
    process per question) every 10 s until then, so that a ServerApp that died without
    closing its chain is noticed too, and every second after it.
    """
    status, asked = "not asked yet", -1e9

    def finished() -> str | None:
        nonlocal status, asked
        closed = "closing" in chain_types(run_dir)
        if closed or time.monotonic() - asked >= 10.0:
            status, asked = run_status(env, federation, run_id), time.monotonic()
        return status if status.startswith("finished") else None

    return wait_for(finished, f"run {run_id} to finish", timeout, poll=1.0,
                    state=lambda: f"Flower status {status}; chain {chain_types(run_dir)}")

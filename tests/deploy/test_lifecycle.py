"""``fedsilo server start`` / ``site start`` stop every process they started on SIGTERM/Ctrl-C."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import tomli_w

from fedsilo.server.deploy_procs import descendants

from .conftest import write_site_toml
from .procs import BIN, Procs, env_for, free_ports, wait_for, wait_for_port

pytestmark = pytest.mark.network


def test_server_and_site_stop_their_processes_on_sigterm(tmp_path: Path) -> None:
    link, node = free_ports(2)
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(tomli_w.dumps({"superlink": {"port": link, "state_dir": "state", "insecure": True}}))
    site_toml = write_site_toml(tmp_path / "site" / "site.toml",
                                supernode={"superlink": f"127.0.0.1:{link}", "runtime_port": node})
    procs = Procs(tmp_path / "logs", env_for(tmp_path / "home"))
    try:
        server = procs.start("server", [BIN / "fedsilo", "server", "start", "--config", server_toml])
        wait_for_port(server, "127.0.0.1", link, timeout=60)
        site = procs.start("site", [BIN / "fedsilo", "site", "start", "--config", site_toml])
        wait_for_port(site, "127.0.0.1", node, timeout=60)
        tree = {p for proc in (server, site) for p in descendants(proc.pid)}
        assert len(tree) >= 3  # superlink (+ its superexec), supernode (+ its superexec)
        for proc in (site, server):
            proc.popen.send_signal(signal.SIGTERM)  # only fedsilo itself; it must stop its children
        wait_for(lambda: not server.running() and not site.running(), "fedsilo to exit", 30)
        # fedsilo exits after SIGKILLing what did not stop in time; the kernel may need a
        # moment to finish those off, not a stopped child that keeps running
        wait_for(lambda: not _alive(tree), "every process fedsilo started to be gone", 10,
                 poll=0.1, state=lambda: _alive(tree))
        assert server.popen.returncode == 0 and site.popen.returncode == 0
        assert "fedsilo server: stopped" in server.log_path.read_text()
    finally:
        left = procs.stop_all()
    assert left == []


def _alive(pids: set[int]) -> list[str]:
    """``pid cmdline`` of each of ``pids`` still running (zombies count as gone)."""
    out = []
    for pid in sorted(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] != "Z":
            out.append(f"{pid} {cmd}")
    return out

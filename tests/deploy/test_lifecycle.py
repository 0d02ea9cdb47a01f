"""``fedsilo server start`` / ``site start`` stop every process they started on SIGTERM/Ctrl-C."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import tomli_w

from fedsilo.server.deploy_procs import descendants

from .conftest import write_site_toml
from .procs import BIN, Procs, env_for, free_ports, wait_for_port, wait_until

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
        wait_until(lambda: not server.running() and not site.running(), 30, "fedsilo to exit")
        time.sleep(0.5)
        alive = [p for p in tree if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z"]
        assert alive == []
        assert server.popen.returncode == 0 and site.popen.returncode == 0
        assert "fedsilo server: stopped" in server.log_path.read_text()
    finally:
        left = procs.stop_all()
    assert left == []

"""Issue 24 point 3(c): only the Fleet API faces the sites, through a real nginx.

``fedsilo server start --proxy nginx``: the SuperLink (TLS, site authentication) on
127.0.0.1 only, nginx in front terminating TLS for the sites on another port. Two
``fedsilo site start`` connect through nginx with the federation CA and a federation
trains a round; ``flwr ls``, ``flwr stop`` and ``flwr run`` aimed at nginx's address are
refused (exit 1, fedsilo's refusal in their output, nothing reaches the SuperLink), while
the same ``flwr`` on the operator's loopback still works. nginx and every other process
are stopped by PID.

nginx comes from Debian's package (``.ci/run`` installs it where it is missing); the test
skips, saying so, only when no nginx executable exists.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import tomli_w
from helpers.waiting import Startup

from fedsilo.lineage import key_fingerprint, load_or_create_key, public_key_hex
from fedsilo.server.certs import init_certs
from fedsilo.server.proxy import (
    FLEET_PREFIX,
    FLEET_ROUTES,
    REFUSAL,
    exposed_listeners,
    nginx_bin,
)

from .procs import BIN, Procs, env_for, exited_summary, free_ports, wait_for, wait_for_port

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(nginx_bin() is None, reason="nginx is not installed and could not be "
                       "(.ci/run installs Debian's package: apt-get install -y nginx)"),
]

SITES = ("a", "b")


def _site_toml(path: Path, site: str, pid: int, *, ca: Path, key: Path, door: int, port: int,
               fingerprint: str) -> Path:
    doc = {
        "site_id": site,
        "trainer": "fedsilo.simulations.flower_app:bundled_trainer",
        "key": "lineage.pem",
        "ledger": "ledger.jsonl",
        "trainer_options": {"dataset": "digits", "partition_id": pid, "sites": 2, "partition": "iid"},
        "policy": {"server_key_fingerprints": [fingerprint], "allowed_aggregators": ["mean"],
                   "allowed_optimizers": ["fedavg"], "max_rounds": 2},
        # the sites know only nginx's address, never the SuperLink's
        "supernode": {"superlink": f"127.0.0.1:{door}", "ca_cert": str(ca), "auth_key": str(key),
                      "runtime_port": port, "max_wait_time": 15.0},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_only_the_fleet_api_passes_the_proxy(tmp_path: Path, startup: Startup) -> None:
    env = env_for(tmp_path / "flwr-home")
    fedsilo = str(BIN / "fedsilo")
    certs = init_certs(tmp_path / "certs", ["127.0.0.1", "localhost"], list(SITES))
    fp = key_fingerprint(public_key_hex(load_or_create_key(certs.lineage_key)))
    link, door, *ports = free_ports(4)
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(tomli_w.dumps({
        "superlink": {"host": "127.0.0.1", "port": link, "state_dir": "state",
                      "ca_cert": str(certs.ca_cert), "cert": str(certs.server_cert),
                      "key": str(certs.server_key), "lineage_key": str(certs.lineage_key)},
        "sites": {s: str(certs.site_public_key(s)) for s in SITES},
        "proxy": {"host": "127.0.0.1", "port": door},
    }))
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(tomli_w.dumps({"dataset": "digits", "sites": 2, "rounds": 1, "task_options": {"partition": "iid"}, "eval_every": 0,
                                       "round_timeout": startup.scaled(240),
                                       "out": str(tmp_path / "runs")}))
    tomls = {s: _site_toml(tmp_path / f"site-{s}" / "site.toml", s, i, ca=certs.ca_cert,
                           key=certs.site_key(s), door=door, port=ports[i], fingerprint=fp)
             for i, s in enumerate(SITES)}
    # the `flwr` CLI of someone who can reach only the sites' door
    outsider = env_for(tmp_path / "outsider")
    (tmp_path / "outsider").mkdir()
    (tmp_path / "outsider" / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": "door", "door": {"address": f"127.0.0.1:{door}",
                                    "root-certificates": str(certs.ca_cert)}}}))
    outsider["COLUMNS"] = "400"  # Flower's error box on one line

    procs = Procs(tmp_path / "logs", env)
    try:
        server = procs.start("server", [fedsilo, "server", "start", "--config", server_toml,
                                        "--proxy", "nginx"], cwd=tmp_path)
        wait_for(lambda: "forwards only the Fleet API" in server.log_path.read_text(),
                 "SuperLink and nginx started", startup.scaled(90), state=server.log_tail)
        wait_for_port(server, "127.0.0.1", door, timeout=startup.scaled(30))
        nginx_pid = int(server.log_path.read_text().split("nginx pid ")[1].split()[0])
        assert exposed_listeners(link) == []  # the SuperLink itself: loopback only
        nodes = {s: procs.start(f"site-{s}", [fedsilo, "site", "start", "--config", p], cwd=tmp_path)
                 for s, p in tomls.items()}

        def status() -> dict:
            res = subprocess.run([fedsilo, "server", "status", "--server", str(server_toml), "--json"],
                                 capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        wait_for(lambda: status()["online"] == 2, "both sites online through nginx",
                 startup.scaled(120), poll=2.0, state=lambda: exited_summary(list(nodes.values())))
        wait_s = startup.scaled(300)
        run = subprocess.run([fedsilo, "server", "run", "--config", str(run_toml), "--server",
                              str(server_toml), "--run-id", "door2", "--wait", "--timeout",
                              f"{wait_s:.0f}"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=wait_s + 30)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.splitlines()[-1] == ("fedsilo server: run door2 completed: 1 of 1 rounds "
                                               "changed the model (Flower: finished:completed)")
        st = status()
        assert (st["online"], st["current_round"], st["lineage_rounds"]) == (2, 1, 1)
        assert st["warnings"] == []
        flwr_run_id = str(st["runs"][0]["run-id"])

        # The Control API through the door: list, stop and submit are all refused.
        refused = {
            "ls": _flwr(outsider, "ls", "door"),
            "stop": _flwr(outsider, "stop", flwr_run_id, "door"),
            "run": _flwr(outsider, "run", str(tmp_path / "state" / "app"), "door"),
        }
        for name, res in refused.items():
            out = res.stdout + res.stderr
            assert res.returncode == 1, f"flwr {name}: {out}"
            assert REFUSAL in out, f"flwr {name}: {out}"
        as_json = _flwr(outsider, "ls", "door", "--format", "json")
        payload = json.loads(as_json.stdout[as_json.stdout.find("{"):])
        assert payload["success"] is False
        assert payload["error-message"].splitlines()[-1] == REFUSAL
        # nothing reached the SuperLink: still one run, not stopped
        st = status()
        assert [(str(r["run-id"]), r["status"]) for r in st["runs"]] == [
            (flwr_run_id, "finished:completed")]
        assert all(n.running() for n in nodes.values()), exited_summary(list(nodes.values()))
    finally:
        left = procs.stop_all()
    assert left == [], f"processes still alive: {left}"
    assert not _alive(nginx_pid)

    access = (tmp_path / "state" / "logs" / "nginx-access.log").read_text().splitlines()
    codes = {(ln.split('"')[1].split()[1], ln.split('"')[2].split()[0]) for ln in access}
    for path in ("/v1/control/list-runs", "/v1/control/stop-run", "/v1/control/start-run"):
        assert (path, "403") in codes, sorted(codes)
    for path in ("/v1/fleet/activate-node", "/v1/fleet/pull-messages", "/v1/fleet/push-messages"):
        assert (path, "200") in codes, sorted(codes)
    forwarded = {p for p, c in codes if c != "403"}  # whatever nginx let through
    assert forwarded <= {FLEET_PREFIX + r for r in FLEET_ROUTES}, sorted(forwarded)

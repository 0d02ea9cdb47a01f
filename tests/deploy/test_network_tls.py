"""Issue 7 point 6: TLS + SuperNode authentication on loopback, through fedsilo's CLI.

``fedsilo certs init``, ``fedsilo server start`` (SuperLink with TLS, site keys
registered), three ``fedsilo site start`` (site.toml with a Trainer entry point and a
policy pinning the server's lineage key), ``fedsilo server run --wait`` for 2 rounds.
Then: ``lineage verify`` passes, each site's ledger reconciles with the chain, a fourth
SuperNode whose key is not registered is refused, a SuperNode given the wrong CA cannot
connect, ``fedsilo server status`` reports 3 sites and round 2. Every process is
stopped by PID.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import tomli_w
from helpers.waiting import Startup

from fedsilo.lineage import (
    key_fingerprint,
    load_chain,
    load_or_create_key,
    public_key_hex,
    reconcile,
    verify_run,
)
from fedsilo.server.certs import init_certs

from .procs import BIN, Procs, env_for, exited_summary, free_ports, wait_for, wait_for_port

pytestmark = pytest.mark.network

SITES = ("a", "b", "c")


def _site_toml(path: Path, site: str, pid: int, *, ca: Path, key: Path, link: int, port: int,
               fingerprint: str, max_rounds: int = 2) -> Path:
    doc = {
        "site_id": site,
        "trainer": "fedsilo.simulations.flower_app:bundled_trainer",
        "key": "lineage.pem",
        "ledger": "ledger.jsonl",
        "trainer_options": {"dataset": "digits", "partition_id": pid, "sites": 3, "partition": "iid"},
        "policy": {"server_key_fingerprints": [fingerprint], "allowed_aggregators": ["mean"],
                   "allowed_optimizers": ["fedavg"], "max_rounds": max_rounds},
        "supernode": {"superlink": f"127.0.0.1:{link}", "ca_cert": str(ca), "auth_key": str(key),
                      "runtime_port": port, "max_wait_time": 15.0},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path


def test_tls_federation_two_rounds(tmp_path: Path, startup: Startup) -> None:
    env = env_for(tmp_path / "flwr-home")
    fedsilo = str(BIN / "fedsilo")
    certs = init_certs(tmp_path / "certs", ["127.0.0.1", "localhost"], [*SITES, "d"])
    other = init_certs(tmp_path / "other-ca", ["127.0.0.1"], ["w"])
    fp = key_fingerprint(public_key_hex(load_or_create_key(certs.lineage_key)))
    link, *ports = free_ports(6)
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(tomli_w.dumps({
        "superlink": {"port": link, "state_dir": "state", "ca_cert": str(certs.ca_cert),
                      "cert": str(certs.server_cert), "key": str(certs.server_key),
                      "lineage_key": str(certs.lineage_key)},
        "sites": {s: str(certs.site_public_key(s)) for s in SITES},
    }))
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(tomli_w.dumps({"dataset": "digits", "sites": 3, "rounds": 2, "task_options": {"partition": "iid"},
                                       "eval_every": 2,  # the sites score the last model only
                                       "round_timeout": startup.scaled(240),
                                       "out": str(tmp_path / "runs")}))
    # c's policy allows 1 round: it refuses round 2, in its ledger and, by its reply, in lineage.
    tomls = {s: _site_toml(tmp_path / f"site-{s}" / "site.toml", s, i, ca=certs.ca_cert,
                           key=certs.site_key(s), link=link, port=ports[i], fingerprint=fp,
                           max_rounds=1 if s == "c" else 2)
             for i, s in enumerate(SITES)}
    # d: a key the SuperLink never registered; w: a registered site's key but the wrong CA.
    tomls["d"] = _site_toml(tmp_path / "site-d" / "site.toml", "d", 0, ca=certs.ca_cert,
                            key=certs.site_key("d"), link=link, port=ports[3], fingerprint=fp)
    tomls["w"] = _site_toml(tmp_path / "site-w" / "site.toml", "w", 1, ca=other.ca_cert,
                            key=certs.site_key("b"), link=link, port=ports[4], fingerprint=fp)

    procs = Procs(tmp_path / "logs", env)
    try:
        server = procs.start("server", [fedsilo, "server", "start", "--config", server_toml], cwd=tmp_path)
        wait_for_port(server, "127.0.0.1", link, timeout=startup.scaled(60))
        wait_for(lambda: "registered sites" in server.log_path.read_text(), "site registration",
                 startup.scaled(60), state=server.log_tail)
        nodes = {s: procs.start(f"site-{s}", [fedsilo, "site", "start", "--config", p], cwd=tmp_path)
                 for s, p in tomls.items()}

        def status() -> dict:
            res = subprocess.run([fedsilo, "server", "status", "--server", str(server_toml), "--json"],
                                 capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        # the run waits a fixed 120 s for its sites (ServerSpec.node_wait_timeout): start it
        # once they are online, however long their start took on this machine
        wait_for(lambda: status()["online"] == 3, "the three registered sites online",
                 startup.scaled(120), poll=2.0, state=lambda: exited_summary(list(nodes.values())))
        wait_s = startup.scaled(300)  # a safety net: `--wait` returns when the run ends
        run = subprocess.run([fedsilo, "server", "run", "--config", str(run_toml), "--server",
                              str(server_toml), "--run-id", "tls3", "--wait", "--timeout",
                              f"{wait_s:.0f}"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=wait_s + 30)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.splitlines()[-1] == ("fedsilo server: run tls3 completed: 2 of 2 rounds "
                                               "changed the model (Flower: finished:completed)")
        st = status()
        assert (st["online"], st["current_round"], st["lineage_rounds"]) == (3, 2, 2)
        assert sorted(n["site"] for n in st["nodes"]) == list(SITES)  # only registered keys known
        for bad in ("d", "w"):
            wait_for(lambda b=bad: not nodes[b].running(), f"SuperNode {bad} to give up",
                     startup.scaled(60))
    finally:
        left = procs.stop_all()
    assert left == [], f"processes still alive: {left}"

    # The refused SuperNodes: unregistered key and wrong CA.
    assert nodes["d"].popen.returncode == 1
    d_log = (tmp_path / "site-d" / "logs" / "supernode-d.log").read_text()
    assert "Failed to activate SuperNode" in d_log
    assert nodes["w"].popen.returncode == 1
    w_log = (tmp_path / "site-w" / "logs" / "supernode-w.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in w_log

    run_dir = tmp_path / "runs" / "tls3"
    server_pub = public_key_hex(load_or_create_key(certs.lineage_key))
    cli = subprocess.run([fedsilo, "lineage", "verify", str(run_dir), "--server-key", server_pub],
                         capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    report = verify_run(run_dir, expected_server_key=server_pub, all_signatures=True)
    assert report.ok, report.summary
    # declarations + contributions + the sites' signed scores of each round's model
    evaluations = [len(r["body"].get("evaluations", []))
                   for r in load_chain(run_dir).of_type("round")]
    assert evaluations[0] == 0 and evaluations[1] >= 1, evaluations
    assert (report.rounds, report.site_signatures, report.closed) == \
        (2, 3 + 5 + sum(evaluations), True)
    genesis = load_chain(run_dir).genesis
    assert sorted(s["site_id"] for s in genesis["sites"]) == list(SITES)
    refusal = "round 2 exceeds the site's max_rounds 1"
    for s in SITES:
        ledger = tmp_path / f"site-{s}" / "ledger.jsonl"
        entries = [json.loads(x) for x in ledger.read_text().splitlines()]
        last = (2, "refused") if s == "c" else (2, "sent")
        assert [(e["round"], e["status"]) for e in entries] == [(1, "sent"), last]
        assert reconcile(run_dir, ledger) == []
    assert entries[-1]["reason"] == refusal
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["accepted"] for r in metrics["rounds"]] == [3, 2]
    assert refusal in metrics["rounds"][-1]["rejected"]["c"]

"""Issue 24 points 1 and 3(a)(b): the site decides which code runs, with real processes.

``fedsilo server start`` (insecure SuperLink on 127.0.0.1), two ``fedsilo site start``
(their SuperNodes run fedsilo's ``flwr-clientapp``, `fedsilo.client.app_runner`), then:

(a) an app bundle naming its own ClientApp module, which would write a file at the site
    when imported, submitted with plain ``flwr run``: the file is never written, each site
    refuses (log, ledger), lineage records the refusals; a ``fedsilo server run``
    afterwards trains normally and records the digest of the bundle each site ran;
(b) sites trusting one key: a bundle ``fedsilo server run`` signs with it runs; one signed
    with another key, and one tampered with after ``fedsilo app sign``, are refused.

Every process is stopped by PID.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from helpers.waiting import Startup

from fedsilo.client.app_code import OWN_CLIENTAPP, content_digest
from fedsilo.lineage import (
    key_fingerprint,
    load_chain,
    load_or_create_key,
    public_key_hex,
    verify_run,
)
from fedsilo.server.config import RunConfig
from fedsilo.server.deploy import app_run_config, write_app_dir

from .procs import (
    BIN,
    Procs,
    env_for,
    exited_summary,
    flwr_json,
    free_ports,
    wait_for,
    wait_for_port,
    wait_run_finished,
)

pytestmark = pytest.mark.network

SITES = ("a", "b")
EVIL = "evil_app.client:app"


class Federation:
    """A SuperLink and two sites started with fedsilo's CLI (insecure, loopback)."""

    def __init__(self, tmp: Path, startup: Startup, policy: dict[str, Any]) -> None:
        self.tmp, self.startup = tmp, startup
        self.env = env_for(tmp / "flwr-home")
        self.link, *self.ports = free_ports(3)
        self.server_toml = self.write_server_toml("server.toml")
        self.site_dirs = {s: tmp / f"site-{s}" for s in SITES}
        for i, s in enumerate(SITES):
            self.site_dirs[s].mkdir()
            (self.site_dirs[s] / "site.toml").write_text(tomli_w.dumps({
                "site_id": s, "trainer": "fedsilo.simulations.flower_app:bundled_trainer",
                "key": "lineage.pem", "ledger": "ledger.jsonl",
                "trainer_options": {"dataset": "digits", "partition_id": i, "sites": 2},
                "policy": policy,
                "supernode": {"superlink": f"127.0.0.1:{self.link}", "insecure": True,
                              "runtime_port": self.ports[i], "max_wait_time": 30.0},
            }))
        self.procs = Procs(tmp / "logs", self.env)

    def write_server_toml(self, name: str, app_key: Path | None = None) -> Path:
        link: dict[str, Any] = {"port": self.link, "state_dir": "state", "insecure": True}
        if app_key is not None:
            link["app_key"] = str(app_key)
        path = self.tmp / name
        path.write_text(tomli_w.dumps({"superlink": link}))
        return path

    def start(self) -> None:
        fedsilo = BIN / "fedsilo"
        server = self.procs.start("server", [fedsilo, "server", "start", "--config", self.server_toml],
                                  cwd=self.tmp)
        wait_for_port(server, "127.0.0.1", self.link, timeout=self.startup.scaled(60))
        nodes = [self.procs.start(f"site-{s}", [fedsilo, "site", "start", "--config",
                                                self.site_dirs[s] / "site.toml"], cwd=self.tmp)
                 for s in SITES]
        wait_for(lambda: self.status()["online"] == len(SITES), "both sites online",
                 self.startup.scaled(120), poll=2.0, state=lambda: exited_summary(nodes))

    def status(self) -> dict[str, Any]:
        res = self.fedsilo("server", "status", "--server", str(self.server_toml), "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def fedsilo(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "fedsilo"), *args], capture_output=True, text=True,
                              env=self.env, cwd=self.tmp, timeout=timeout)

    def run_toml(self, run_id: str) -> Path:
        path = self.tmp / f"run-{run_id}.toml"
        path.write_text(tomli_w.dumps(self.run_options()))
        return path

    def run_options(self) -> dict[str, Any]:
        return {"dataset": "digits", "sites": 2, "rounds": 1, "task_options": {"partition": "iid"}, "eval_every": 0,
                "round_timeout": self.startup.scaled(240), "out": str(self.tmp / "runs")}

    def server_run(self, run_id: str, server_toml: Path | None = None) -> subprocess.CompletedProcess[str]:
        wait_s = self.startup.scaled(300)  # a safety net: `--wait` returns when the run ends
        return self.fedsilo("server", "run", "--config", str(self.run_toml(run_id)), "--server",
                            str(server_toml or self.server_toml), "--run-id", run_id, "--wait",
                            "--timeout", f"{wait_s:.0f}", timeout=wait_s + 60)

    def flwr_run(self, app: Path, run_id: str) -> str:
        """Submit ``app`` with plain ``flwr run`` (anyone who reaches the port can); its status."""
        env = {**self.env, "FLWR_HOME": str(self.tmp / "state" / "flwr-home")}
        started = flwr_json(env, "run", str(app), "fedsilo")
        return wait_run_finished(env, "fedsilo", started["run-id"], self.tmp / "runs" / run_id,
                                 self.startup.scaled(300))

    def app_dir(self, name: str, run_id: str) -> Path:
        """A Flower app like the one ``fedsilo server run`` submits, for run ``run_id``."""
        config = RunConfig.from_dict({**self.run_options(), "run_id": run_id})
        return write_app_dir(self.tmp / name, app_run_config(config))

    def ledger(self, site: str) -> list[dict[str, Any]]:
        path = self.site_dirs[site] / "ledger.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def log(self, site: str) -> str:
        return (self.site_dirs[site] / "logs" / f"supernode-{site}.log").read_text()

    def stop(self) -> None:
        left = self.procs.stop_all()
        assert left == [], f"processes still alive: {left}"


def _bundle_digest(app: Path) -> str:
    from fedsilo.client.app_code import app_dir_files

    return content_digest(app_dir_files(app))


def _assert_refused_in_lineage(run_dir: Path, reason: str) -> None:
    """Genesis names each refusing site and why; the chain closes with the error; it verifies."""
    chain = load_chain(run_dir)
    notes = chain.genesis["notes"]
    for s in SITES:
        assert any(n.startswith("handshake: node ") and f"site {s} refused app bundle" in n
                   and reason in n for n in notes), notes
    assert chain.genesis["sites"] == []
    closing = chain.closing
    assert closing is not None
    assert closing["reason"] == "error"
    assert closing["detail"].startswith("FederationError: handshake: 0 of 2 sites answered")
    report = verify_run(run_dir)
    assert report.ok, report.summary


def test_foreign_clientapp_is_never_imported(tmp_path: Path, startup: Startup) -> None:
    fed = Federation(tmp_path, startup, {})
    marker = tmp_path / "written-by-the-bundle"
    evil = fed.app_dir("evil", "evil")
    doc = (evil / "pyproject.toml").read_text().replace(OWN_CLIENTAPP, EVIL)
    (evil / "pyproject.toml").write_text(doc)
    (evil / "evil_app").mkdir()
    (evil / "evil_app" / "__init__.py").write_text("")
    # imported anywhere, this module writes the marker: nothing at a site may import it
    (evil / "evil_app" / "client.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from fedsilo.simulations.flower_app import client_app\napp = client_app\n")
    digest = _bundle_digest(evil)
    try:
        fed.start()
        status = fed.flwr_run(evil, "evil")
        assert status.startswith("finished:"), status
        assert not marker.exists()
        reason = (f"refused app bundle {digest}: it names ClientApp {EVIL!r}; this site runs "
                  f"only fedsilo's own ({OWN_CLIENTAPP})")
        for s in SITES:
            assert f"fedsilo site: site {s} {reason}" in fed.log(s)
            [entry] = fed.ledger(s)
            assert (entry["run_id"], entry["status"], entry["app_digest"]) == ("evil", "refused", digest)
            assert entry["reason"] == f"site {s} {reason}"
        _assert_refused_in_lineage(tmp_path / "runs" / "evil", reason)

        # a legitimate run afterwards trains normally, on the bundle fedsilo server run built
        run = fed.server_run("good")
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.splitlines()[-1].startswith("fedsilo server: run good completed: 1 of 1")
    finally:
        fed.stop()
    assert not marker.exists()
    good = _bundle_digest(tmp_path / "state" / "app")
    genesis = load_chain(tmp_path / "runs" / "good").genesis
    assert [(s["site_id"], s["app_digest"]) for s in genesis["sites"]] == [(s, good) for s in SITES]
    for s in SITES:
        sent = fed.ledger(s)[-1]
        assert (sent["run_id"], sent["status"], sent["app_digest"]) == ("good", "sent", good)
    assert verify_run(tmp_path / "runs" / "good").ok


def test_only_bundles_signed_by_a_trusted_key_run(tmp_path: Path, startup: Startup) -> None:
    trusted = load_or_create_key(tmp_path / "keys" / "trusted.pem")
    other = load_or_create_key(tmp_path / "keys" / "other.pem")
    trusted_fp = key_fingerprint(public_key_hex(trusted))
    other_fp = key_fingerprint(public_key_hex(other))
    fed = Federation(tmp_path, startup, {"trusted_app_keys": [trusted_fp]})
    signed = fed.write_server_toml("server-signed.toml", tmp_path / "keys" / "trusted.pem")
    wrong = fed.write_server_toml("server-other.toml", tmp_path / "keys" / "other.pem")
    tampered = fed.app_dir("tampered", "tampered")
    signing = fed.fedsilo("app", "sign", str(tampered), "--key", str(tmp_path / "keys" / "trusted.pem"))
    assert signing.returncode == 0, signing.stderr
    signed_digest = signing.stdout.split()[3]
    doc = (tampered / "pyproject.toml").read_text()
    (tampered / "pyproject.toml").write_text(doc.replace("rounds = 1", "rounds = 2"))
    tampered_digest = _bundle_digest(tampered)
    assert tampered_digest != signed_digest
    try:
        fed.start()
        run = fed.server_run("trusted", signed)
        assert run.returncode == 0, run.stdout + run.stderr
        good = _bundle_digest(tmp_path / "state" / "app")

        run = fed.server_run("other", wrong)
        assert run.returncode == 1, run.stdout + run.stderr
        assert "sites answered" in run.stdout.splitlines()[-1]
        other_digest = _bundle_digest(tmp_path / "state" / "app")

        assert fed.flwr_run(tampered, "tampered").startswith("finished:")
    finally:
        fed.stop()
    genesis = load_chain(tmp_path / "runs" / "trusted").genesis
    assert [(s["site_id"], s["app_digest"]) for s in genesis["sites"]] == [(s, good) for s in SITES]
    wrong_key = (f"refused app bundle {other_digest}: it is signed by {other_fp}, not a key in "
                 "trusted_app_keys and its digest is not in accepted_app_digests")
    _assert_refused_in_lineage(tmp_path / "runs" / "other", wrong_key)
    altered = (f"refused app bundle {tampered_digest}: it carries a signature that does not "
               "match its content and its digest is not in accepted_app_digests")
    _assert_refused_in_lineage(tmp_path / "runs" / "tampered", altered)
    for s in SITES:
        assert [(e["run_id"], e["status"]) for e in fed.ledger(s)] == [
            ("trusted", "sent"), ("other", "refused"), ("tampered", "refused")]
        assert fed.ledger(s)[1]["reason"] == f"site {s} {wrong_key}"
        assert fed.ledger(s)[2]["reason"] == f"site {s} {altered}"

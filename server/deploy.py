"""Operator side of a deployment: SuperLink start, site registration, run submission, status.

``server.toml`` (paths relative to the file's directory)::

    [superlink]
    host = "127.0.0.1"              # address the SuperLink binds (Fleet, Control, Runtime HTTP APIs)
    port = 9092
    state_dir = "state"             # state database, the flwr CLI's FLWR_HOME, logs, run records
    ca_cert = "certs/ca.pem"        # TLS (all three required unless insecure = true)
    cert = "certs/server.pem"
    key = "certs/server.key"
    lineage_key = "certs/server-lineage.pem"   # the server's Ed25519 lineage signing key
    app_key = "keys/app.pem"        # Ed25519 key `server run` signs each app bundle with
    require_signed_apps = false     # true: the sites require signed bundles (app_key needed)
    insecure = false                # plain HTTP, no SuperNode authentication (tests only)

    [sites]                         # allowed sites: id -> SuperNode auth public key (OpenSSH)
    hospital-a = "certs/sites/hospital-a/auth_key.pub"

    [proxy]                         # optional: `server start --proxy nginx` (fedsilo.server.proxy)
    port = 9443                     # the sites' port; superlink.host must then be loopback

Flower does the work: ``flower-superlink`` (TLS, ``--enable-supernode-auth``, runtime
dependency installation off, SQLite state), ``flwr supernode register`` for each
allowed site's key, ``flwr run`` of a generated Flower App whose components are
fedsilo's ServerApp and ClientApp, ``flwr ls`` / ``flwr supernode ls`` for status. The
``flwr`` CLI's config lives in ``state_dir/flwr-home`` (never the user's ``~/.flwr``)
and names this SuperLink explicitly, so ``flwr`` never starts a SuperLink of its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from fedsilo.common.procs import (
    DeployError,
    ManagedProcess,
    Supervisor,
    child_env,
    flower_bin,
    wait_for_port,
)
from fedsilo.server.deploy_settings import (
    ServerSettings,
    check_app_signing,
    check_server_files,
    read_server_settings,
)
from fedsilo.server.outcome import (
    run_outcome,  # re-exported: the run's status as deployments report it
)

if TYPE_CHECKING:
    from fedsilo.server.config import RunConfig

CONNECTION = "fedsilo"
"""Name of the SuperLink connection written to the flwr CLI's config."""

APP_COMPONENTS = {
    "serverapp": "fedsilo.server.flower_app:server_app",
    "clientapp": "fedsilo.client.flower_app:client_app",
}
FINISHED = "finished"
_PROGRESS = re.compile(r"Using SuperLink|Listing |Flower configuration not found|Created default")


def write_flwr_config(s: ServerSettings) -> Path:
    """Write ``FLWR_HOME/config.toml`` naming this SuperLink as the default connection."""
    s.flwr_home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, Any] = {"address": s.address}
    if s.insecure:
        conn["insecure"] = True
    else:
        assert s.ca_cert is not None
        conn["root-certificates"] = str(s.ca_cert)
    path = s.flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
    return path


def superlink_argv(s: ServerSettings) -> list[str]:
    """The ``flower-superlink`` command line for these settings."""
    argv = [str(flower_bin("flower-superlink")), "--host", s.host, "--port", str(s.port),
            "--database", str(s.database), "--disable-runtime-dependency-installation"]
    if s.insecure:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", str(s.ca_cert), "--ssl-certfile", str(s.cert),
                 "--ssl-keyfile", str(s.key), "--enable-supernode-auth"]
    return argv


def start_superlink(s: ServerSettings, sup: Supervisor, timeout: float = 60.0,
                    check: bool = True) -> ManagedProcess:
    """Check the files, start the SuperLink under ``sup``, wait for it, register the sites.

    Parameters
    ----------
    s : the validated settings.
    sup : supervisor that owns (and finally stops) the SuperLink process.
    timeout : seconds to wait for the SuperLink to listen, and for each registration.
    check : run `check_server_files` first (False when the caller already did).

    On any failure the SuperLink (if started) is stopped before `DeployError` is raised.
    """
    if check:
        check_server_files(s)
    s.state_dir.mkdir(parents=True, exist_ok=True)
    write_flwr_config(s)
    proc = sup.start("superlink", superlink_argv(s), child_env(s.flwr_home), cwd=s.state_dir)
    try:
        wait_for_port(proc, "127.0.0.1" if s.host == "0.0.0.0" else s.host, s.port, timeout)
        if not s.insecure:
            register_sites(s, timeout=timeout)
    except BaseException:
        sup.procs.remove(proc)
        proc.stop()
        raise
    return proc


def register_sites(s: ServerSettings, timeout: float = 60.0) -> dict[str, str]:
    """Register every allowed site's public key; return site -> SuperLink node id.

    The mapping is kept in ``state_dir/sites.json`` (Flower's node listing has no
    names), so ``status`` can say which site each node is; a key registered by an earlier
    start keeps its recorded node id.
    """
    path = s.state_dir / "sites.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for site, key in s.sites.items():
        res = flwr(s, ["supernode", "register", str(key), CONNECTION, "--name", site,
                       "--format", "json"], timeout=timeout, check=False)
        payload = _json_payload(res.stdout)
        if payload.get("success"):
            known[site] = str(payload.get("node-id", ""))
        elif "already" not in (res.stdout + res.stderr).lower():
            raise DeployError(f"registering site {site!r} ({key}) failed: {_cli_error(res)}")
    path.write_text(json.dumps(known, indent=1, sort_keys=True))
    return {site: known.get(site, "") for site in s.sites}


def site_names(s: ServerSettings) -> dict[str, str]:
    """node id -> site id, from the registrations recorded in ``state_dir/sites.json``."""
    path = s.state_dir / "sites.json"
    if not path.exists():
        return {}
    return {str(node): site for site, node in json.loads(path.read_text()).items() if node}


# ------------------------------------------------------------------ runs
def write_app_dir(app_dir: Path, run_config: Mapping[str, Any]) -> Path:
    """Write a Flower App (``pyproject.toml``) whose components are fedsilo's apps.

    Parameters
    ----------
    app_dir : directory to (re)write.
    run_config : the app's ``[tool.flwr.app.config]`` (TOML values; nested tables allowed).
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    from fedsilo import __version__

    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedsilo-run", "version": "1.0.0", "license": "Apache-2.0",
                    "description": "fedsilo federation (generated by fedsilo server run)",
                    "dependencies": [f"fedsilo=={__version__}"]},
        "tool": {"flwr": {"app": {"publisher": "fedsilo", "components": dict(APP_COMPONENTS),
                                  "config": dict(run_config)}}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return app_dir


def app_run_config(config: RunConfig, *, server_key: str = "", resume: bool = False,
                   evaluate_only: bool = False) -> dict[str, Any]:
    """The Flower App's run config for ``config``: its options (hyphenated) plus the two
    deployment-only keys, ``server-key`` (lineage key path; empty: a new key per run) and
    ``resume`` (continue the crashed run ``<out>/<run_id>``); ``evaluate-only`` (no
    training: the sites score ``init_model``) only when set."""
    values: dict[str, Any] = dict(config.to_dict())
    # one JSON string: Flower's run config holds no lists (a tabular schema's categories)
    # and its keys lose their case and hyphens; `flower_app.run_config_dict` decodes it
    values["task_options"] = json.dumps(config.task_options, sort_keys=True)
    values["run_id"] = str(config.run_id or "")
    values["server_key"] = server_key
    values["resume"] = resume
    if evaluate_only:
        values["evaluate_only"] = True
    return {k.replace("_", "-"): v for k, v in values.items()}


@dataclass
class SubmittedRun:
    """A run handed to the SuperLink."""

    flwr_run_id: str
    run_id: str
    run_dir: Path


def submit_run(s: ServerSettings, config: RunConfig, app_dir: Path | None = None,
               timeout: float = 120.0, *, resume: bool = False,
               evaluate_only: bool = False) -> SubmittedRun:
    """``flwr run`` fedsilo's apps with ``config`` (a resolved `RunConfig`) on this SuperLink.

    ``config.out`` should be absolute (the ServerApp runs in the SuperLink's process tree).
    With ``resume`` the ServerApp continues the crashed run ``<out>/<run_id>`` from its
    last checkpoint instead of starting a new one.
    """
    values = app_run_config(config, server_key=str(s.lineage_key or ""), resume=resume,
                            evaluate_only=evaluate_only)
    app = write_app_dir(app_dir or s.state_dir / "app", values)
    sign_bundle(s, app)
    res = flwr(s, ["run", str(app), CONNECTION, "--format", "json"], timeout=timeout, check=False)
    payload = _json_payload(res.stdout)
    if not payload.get("success"):
        raise DeployError(f"flwr run failed: {_cli_error(res)}")
    flwr_run_id = str(payload["run-id"])
    run_id = str(config.run_id or "") or f"flwr-{flwr_run_id}"
    run = SubmittedRun(flwr_run_id, run_id, Path(config.out) / run_id)
    record = {"flwr_run_id": flwr_run_id, "run_id": run_id, "run_dir": str(run.run_dir),
              "submitted_at": time.time()}
    with (s.state_dir / "runs.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return run


def sign_bundle(s: ServerSettings, app: Path) -> None:
    """Sign ``app``'s bundle with ``superlink.app_key`` (as ``fedsilo app sign`` does), or
    leave it unsigned; a signature left from an earlier run never travels with a new one."""
    from fedsilo.lineage.app_bundle import SIGNATURE_FILE, load_signing_key, sign_app_dir

    (app / SIGNATURE_FILE).unlink(missing_ok=True)
    if s.app_key is not None:
        sign_app_dir(app, load_signing_key(s.app_key, "superlink.app_key"))


def run_status(s: ServerSettings, flwr_run_id: str) -> str:
    """Flower's status of a run (``pending``, ``running``, ``finished:completed``...)."""
    payload = _json_payload(flwr(s, ["ls", CONNECTION, "--run-id", flwr_run_id, "--format", "json"]).stdout)
    runs = payload.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def wait_run(s: ServerSettings, flwr_run_id: str, timeout: float,
             run_dir: Path | None = None, poll: float = 2.0, max_poll: float = 10.0) -> str:
    """Poll until the run finishes; return Flower's final status; `DeployError` on timeout.
    Each question is a ``flwr ls`` process (~1 CPU-s of the server's), so they come every
    ``poll`` s at first, then less often (up to ``max_poll``); once ``run_dir/metrics.json``
    exists (the run closed: a cheap file check) every ``poll`` s until Flower says finished."""
    deadline = time.monotonic() + timeout
    wait, next_ask = poll, 0.0
    while time.monotonic() < deadline:
        done = run_dir is not None and (run_dir / "metrics.json").exists()
        if done or time.monotonic() >= next_ask:
            status = run_status(s, flwr_run_id)
            if status.startswith(FINISHED):
                return status
            next_ask = time.monotonic() + (poll if done else wait)
            wait = min(wait * 1.5, max_poll)
        time.sleep(0.5 if not done else poll)
    raise DeployError(f"run {flwr_run_id} did not finish within {timeout:.0f} s")


# ------------------------------------------------------------------ status
@dataclass
class Status:
    """What ``fedsilo server status`` shows."""

    nodes: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    run_dir: Path | None = None
    current_round: int | None = None
    lineage_rounds: int | None = None

    @property
    def online(self) -> int:
        return sum(1 for n in self.nodes if n.get("status") == "online")


def status(s: ServerSettings, run_dir: Path | None = None) -> Status:
    """Connected SuperNodes and runs (Control API via ``flwr``) and the latest run's round."""
    res = flwr(s, ["supernode", "ls", CONNECTION, "--format", "json"])
    names = site_names(s)
    nodes = [{**n, "site": names.get(str(n.get("node-id")), "")}
             for n in _json_payload(res.stdout).get("nodes") or []]
    runs = list(_json_payload(flwr(s, ["ls", CONNECTION, "--format", "json"]).stdout).get("runs") or [])
    if run_dir is None:
        run_dir = last_run_dir(s)
    st = Status(nodes=nodes, runs=runs, run_dir=run_dir)
    if run_dir is not None:
        st.current_round, st.lineage_rounds = run_progress(run_dir)
    return st


def last_run_dir(s: ServerSettings) -> Path | None:
    """The run directory of the last run submitted from this state directory."""
    path = s.state_dir / "runs.jsonl"
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return Path(json.loads(lines[-1])["run_dir"]) if lines else None


def run_progress(run_dir: Path) -> tuple[int | None, int | None]:
    """(last checkpointed round, round records in the lineage chain) of a run directory."""
    ckpt_round = None
    if (run_dir / "checkpoint.npz").exists():
        from fedsilo.server.checkpoint import read_checkpoint

        ckpt_round = read_checkpoint(run_dir).round
    rounds = None
    db = run_dir / "lineage.sqlite"
    if db.exists():
        import sqlite3

        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (rounds,) = con.execute("SELECT COUNT(*) FROM records WHERE type = 'round'").fetchone()
        except sqlite3.Error:
            rounds = None
        finally:
            con.close()
    return ckpt_round, rounds


# ------------------------------------------------------------------ flwr CLI
def flwr(s: ServerSettings, args: list[str], timeout: float = 60.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ``flwr`` CLI against this SuperLink (its own FLWR_HOME, telemetry off).

    With ``check``, a non-zero exit or a JSON answer with ``"success": false`` raises
    `DeployError` with Flower's message.
    """
    if not (s.flwr_home / "config.toml").exists():
        write_flwr_config(s)
    try:
        res = subprocess.run([str(flower_bin("flwr")), *args], capture_output=True, text=True,
                             env=child_env(s.flwr_home, {"NO_COLOR": "1", "COLUMNS": "200"}),
                             timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise DeployError(f"flwr {args[0]} did not answer within {timeout:.0f} s") from None
    failed = res.returncode != 0 or _json_payload(res.stdout).get("success") is False
    if check and failed:
        raise DeployError(f"flwr {' '.join(args[:2])} failed: {_cli_error(res)}")
    return res


def _json_payload(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        out = json.loads(text[start:])
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _cli_error(res: subprocess.CompletedProcess[str]) -> str:
    payload = _json_payload(res.stdout)
    if payload.get("error-message"):
        lines = [ln.strip() for ln in str(payload["error-message"]).splitlines()
                 if ln.strip() and not _PROGRESS.match(ln.strip())]
        return " ".join(lines[:2])
    text = (res.stderr or res.stdout).strip()
    lines = [ln.strip(" │╭╮╰╯─") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Using SuperLink") and ln != "Error"]
    return lines[0] if lines else f"exit code {res.returncode}"


__all__ = [
    "APP_COMPONENTS", "CONNECTION", "ServerSettings", "Status", "SubmittedRun", "app_run_config",
    "check_app_signing", "check_server_files", "read_server_settings", "register_sites",
    "run_outcome", "run_progress", "run_status", "site_names", "start_superlink", "status",
    "submit_run", "superlink_argv", "wait_run", "write_app_dir", "write_flwr_config",
]

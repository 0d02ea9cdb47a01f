"""``server.toml``: the operator's deployment settings, read and checked before anything starts.

`read_server_settings` parses and validates the file (one-line `DeployError` naming the
file and the field); `check_server_files` checks the certificates, keys and port it names.
The file's format is documented in `fedsilo.server.deploy`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsilo.common import tomlfile
from fedsilo.common.keyfiles import CertsError, check_server_tls, load_auth_public_key
from fedsilo.common.procs import DeployError, check_port
from fedsilo.server.proxy import ProxySettings, check_loopback, parse_proxy


@dataclass
class ServerSettings:
    """A validated ``server.toml``.

    Parameters
    ----------
    host, port : where the SuperLink listens (all its HTTP APIs share the port).
    state_dir : SuperLink state database, flwr CLI home, logs and run records.
    ca_cert, cert, key : the CA certificate and the SuperLink's TLS certificate and key.
    lineage_key : the server's Ed25519 lineage signing key (None: a new key per run).
    app_key : Ed25519 key ``server run`` signs every app bundle with (`fedsilo.lineage.app_bundle`;
        the sites' ``[policy] trusted_app_keys`` name it); None: bundles go unsigned.
    require_signed_apps : the federation's sites require signed bundles: without
        ``app_key`` the settings are refused before anything starts.
    insecure : no TLS and no SuperNode authentication (loopback tests only).
    sites : allowed site ids -> their SuperNode authentication public key files.
    proxy : the ``[proxy]`` table (`fedsilo.server.proxy`); None: not in server.toml.
    """

    host: str = "127.0.0.1"
    port: int = 9092
    state_dir: Path = Path("state")
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    lineage_key: Path | None = None
    app_key: Path | None = None
    require_signed_apps: bool = False
    insecure: bool = False
    sites: dict[str, Path] = field(default_factory=dict)
    proxy: ProxySettings | None = None

    @property
    def address(self) -> str:
        """host:port the flwr CLI uses to reach the Control API."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "flwr-home"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def database(self) -> Path:
        return self.state_dir / "superlink.db"


def read_server_settings(path: Path) -> ServerSettings:
    """Parse and validate ``server.toml``; `DeployError` naming the file and field."""
    data = _read_toml(Path(path), "--config")
    base = Path(path).resolve().parent
    link = data.get("superlink", {})
    sites = data.get("sites", {})
    unknown = sorted(set(data) - {"superlink", "sites", "proxy"})
    if unknown:
        raise DeployError(f"{path}: unknown tables {unknown}; accepted: [superlink], [sites], [proxy]")
    if not isinstance(link, dict) or not isinstance(sites, dict):
        raise DeployError(f"{path}: [superlink] and [sites] must be tables")
    known = {"host", "port", "state_dir", "ca_cert", "cert", "key", "lineage_key", "insecure",
             "app_key", "require_signed_apps"}
    bad = sorted(set(link) - known)
    if bad:
        raise DeployError(f"{path}: unknown keys {bad} in [superlink]; accepted: {sorted(known)}")
    s = ServerSettings(
        host=_typed(path, "superlink.host", link.get("host", "127.0.0.1"), str),
        port=_typed(path, "superlink.port", link.get("port", 9092), int),
        state_dir=base / _typed(path, "superlink.state_dir", link.get("state_dir", "state"), str),
        insecure=_typed(path, "superlink.insecure", link.get("insecure", False), bool),
    )
    s.require_signed_apps = _typed(path, "superlink.require_signed_apps",
                                   link.get("require_signed_apps", False), bool)
    for name in ("ca_cert", "cert", "key", "lineage_key", "app_key"):
        if name in link:
            setattr(s, name, base / _typed(path, f"superlink.{name}", link[name], str))
    for site, key in sites.items():
        s.sites[str(site)] = base / _typed(path, f"sites.{site}", key, str)
    if not s.insecure and None in (s.ca_cert, s.cert, s.key):
        raise DeployError(
            f"{path}: [superlink] needs ca_cert, cert and key (or insecure = true for loopback tests)"
        )
    if not s.insecure and not s.sites:
        raise DeployError(f"{path}: [sites] is empty; list each allowed site's auth_key.pub")
    check_app_signing(s, path)
    if "proxy" in data:  # a proxy in front of a public SuperLink protects nothing
        s.proxy = parse_proxy(path, base, data["proxy"])
        check_loopback(s, path)
    return s


def check_app_signing(s: ServerSettings, path: Path) -> None:
    """An unsigned bundle where the sites require signatures, or an unusable app_key, is
    refused here: before anything starts or is submitted."""
    from fedsilo.lineage.app_bundle import AppCodeError, load_signing_key

    if s.require_signed_apps and s.app_key is None:
        raise DeployError(f"{path}: superlink.require_signed_apps is true but superlink.app_key "
                          "is not set: runs would submit unsigned app bundles, which the sites "
                          "refuse; set app_key to the Ed25519 key (PEM) the sites trust")
    if s.app_key is not None:
        try:
            load_signing_key(s.app_key, "superlink.app_key")
        except AppCodeError as exc:
            raise DeployError(f"{path}: {exc}") from None


def check_server_files(s: ServerSettings) -> None:
    """Certificates match and parse, site keys parse, the port is free (before any process starts)."""
    try:
        if s.cert is not None and s.key is not None and s.ca_cert is not None and not s.insecure:
            check_server_tls(s.cert, s.key, s.ca_cert)
        for key in s.sites.values():
            load_auth_public_key(key)
    except CertsError as exc:
        raise DeployError(str(exc)) from None
    if s.lineage_key is not None and not s.lineage_key.exists():
        raise DeployError(f"superlink.lineage_key {s.lineage_key}: file not found")
    check_port("superlink.port", s.host, s.port)


def _read_toml(path: Path, flag: str) -> dict[str, Any]:
    """The TOML file at ``path``; `DeployError` naming ``flag`` when unreadable or invalid."""
    return tomlfile.read_toml(path, DeployError, flag)


def _typed(path: Path, name: str, value: Any, kind: type) -> Any:
    """``value`` when it is a ``kind``; `DeployError` naming ``path`` and ``name`` otherwise."""
    if kind is int and isinstance(value, bool):
        raise DeployError(f"{path}: {name} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise DeployError(f"{path}: {name} must be a {kind.__name__}, got {value!r}")
    return value

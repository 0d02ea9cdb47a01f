"""The sites' door: an nginx reverse proxy that forwards only Flower's Fleet API.

In Flower 1.42 one HTTP port of the SuperLink serves the Fleet API (``/v1/fleet/...``,
what SuperNodes call), the Control API (``/v1/control/...``: submit, list and stop runs,
register keys; unauthenticated in the open-source build) and the Runtime API
(``/v1/runtime/...``, the ServerApp's). All three are protobuf over plain HTTP/1.1 POST
(no gRPC). ``fedsilo server start --proxy nginx`` therefore binds the SuperLink to
loopback and puts nginx in front: nginx terminates TLS for the sites and forwards the
twelve Fleet routes, each by its exact path; every other path and method gets a 403
with a JSON ``detail``, without reaching the SuperLink.

``server.toml`` (optional; these are the defaults)::

    [proxy]
    host = "0.0.0.0"            # where the sites connect
    port = 9443
    cert = <superlink.cert>     # the certificate the sites verify (SANs: the sites' name for it)
    key = <superlink.key>

The SuperLink (``[superlink] host``) must then be a loopback address. With TLS at the
SuperLink, nginx re-encrypts to it and verifies its certificate against
``superlink.ca_cert``, so SuperNode authentication (which Flower allows over TLS only)
stays on; with ``insecure = true`` (loopback tests) it forwards plain HTTP.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from cryptography import x509

from fedsilo.server.certs import CertsError, load_certificate
from fedsilo.server.deploy_procs import (
    DeployError,
    ManagedProcess,
    Supervisor,
    check_port,
    child_env,
    wait_for_port,
)

if TYPE_CHECKING:
    from fedsilo.server.deploy_settings import ServerSettings

PROXIES = ("nginx",)
"""Values of ``fedsilo server start --proxy``."""

FLEET_PREFIX = "/v1/fleet/"
FLEET_ROUTES = (
    "register-node", "activate-node", "deactivate-node", "unregister-node",
    "send-node-heartbeat", "pull-messages", "push-messages", "get-run", "get-fab",
    "push-object", "pull-object", "confirm-message-received",
)
"""Every route of Flower 1.42's Fleet HTTP router, the only ones a SuperNode calls
(``flwr.supernode.fleet_http_client``); a test compares them with Flower's router."""

REFUSAL = ("fedsilo proxy: only the Fleet API is served on this address; the Control and "
           "Runtime APIs are reachable on the operator host only")
MAX_BODY = "64m"  # Flower sends arrays in 5 MiB chunks; FABs are at most 10 MB
_LOOPBACK_NAMES = ("localhost",)


@dataclass
class ProxySettings:
    """The ``[proxy]`` table of ``server.toml`` (see the module docstring)."""

    host: str = "0.0.0.0"
    port: int = 9443
    cert: Path | None = None
    key: Path | None = None


def parse_proxy(path: Path, base: Path, table: Any) -> ProxySettings:
    """Validate the ``[proxy]`` table of ``path`` (files relative to ``base``)."""
    if not isinstance(table, dict):
        raise DeployError(f"{path}: [proxy] must be a table")
    known = {"host", "port", "cert", "key"}
    bad = sorted(set(table) - known)
    if bad:
        raise DeployError(f"{path}: unknown keys {bad} in [proxy]; accepted: {sorted(known)}")
    p = ProxySettings()
    for name, kind in (("host", str), ("port", int), ("cert", str), ("key", str)):
        if name not in table:
            continue
        value = table[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DeployError(f"{path}: proxy.{name} must be a {kind.__name__}, got {value!r}")
        setattr(p, name, base / value if name in ("cert", "key") else value)
    if not 0 < p.port < 65536:
        raise DeployError(f"{path}: proxy.port must be in 1..65535, got {p.port}")
    return p


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback(s: ServerSettings, source: Path) -> None:
    """With a proxy the SuperLink must listen on loopback only: the one-line refusal."""
    if not is_loopback(s.host):
        raise DeployError(
            f"{source}: superlink.host = {s.host!r} is not a loopback address: with a proxy the "
            "SuperLink must listen on 127.0.0.1 (or ::1) only, the sites reach it through "
            "[proxy] host and port")


def resolve_proxy(s: ServerSettings, source: Path) -> ProxySettings:
    """The proxy settings for ``s`` (defaults where server.toml has no [proxy]), checked
    without starting anything: loopback SuperLink, certificate and key, distinct ports."""
    check_loopback(s, source)
    p = s.proxy or ProxySettings()
    p.host = p.host or "0.0.0.0"  # empty: every address, as for the SuperLink
    if ":" in p.host:  # the start-up wait (deploy_procs.wait_for_port) speaks IPv4 only
        raise DeployError(f"{source}: proxy.host {p.host!r}: IPv6 listen addresses are not "
                          "supported; use 0.0.0.0 or an IPv4 address")
    p.cert = p.cert or s.cert
    p.key = p.key or s.key
    if p.cert is None or p.key is None:
        raise DeployError(f"{source}: proxy.cert and proxy.key are required when [superlink] "
                          "has no cert and key (insecure = true)")
    for name, file in (("proxy.cert", p.cert), ("proxy.key", p.key)):
        if not file.is_file():
            raise DeployError(f"{source}: {name} {file}: file not found")
    if p.port == s.port:
        raise DeployError(f"{source}: proxy.port {p.port} is superlink.port too; the sites' "
                          "port and the SuperLink's loopback port must differ")
    s.proxy = p
    return p


def nginx_bin() -> Path | None:
    """The nginx executable (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def proxy_dir(s: ServerSettings) -> Path:
    return s.state_dir / "proxy"


def render_nginx_conf(s: ServerSettings, p: ProxySettings) -> str:
    """nginx.conf for ``s``: TLS for the sites on ``p``, exact Fleet routes to the SuperLink."""
    root = proxy_dir(s)
    scheme = "http" if s.insecure else "https"
    upstream_tls = "" if s.insecure else (
        f"        proxy_ssl_trusted_certificate {s.ca_cert};\n"
        "        proxy_ssl_verify on;\n"
        f"        proxy_ssl_name {upstream_name(s)};\n"
        "        proxy_ssl_session_reuse on;\n")
    body = f'{{"detail": "{REFUSAL}"}}'
    fleet = "".join(
        f"    location = {FLEET_PREFIX}{route} {{\n"
        f"        if ($request_method != POST) {{ return 403 '{body}'; }}\n"
        # a URI in proxy_pass sends exactly this path: never the client's un-normalised one
        f"        proxy_pass {scheme}://superlink{FLEET_PREFIX}{route};\n"
        f"{upstream_tls}"
        "    }\n"
        for route in FLEET_ROUTES)
    link = f"[{s.host}]" if ":" in s.host else s.host
    return f"""\
# Written by `fedsilo server start --proxy nginx` from server.toml; rewritten at every start.
# Only Flower's Fleet API reaches the SuperLink; Control and Runtime paths get a 403.
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log {s.log_dir}/nginx-access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server_tokens off;
    default_type application/json;
    client_max_body_size {MAX_BODY};
    # stream bodies both ways: no temporary files, which the unprivileged worker may not write
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 300s;
    upstream superlink {{
        server {link}:{s.port};
        keepalive 16;
    }}
    server {{
    listen {p.host}:{p.port} ssl;
    ssl_certificate {p.cert};
    ssl_certificate_key {p.key};
    ssl_protocols TLSv1.2 TLSv1.3;
{fleet}    location / {{
        return 403 '{body}';
    }}
    }}
}}
"""


def upstream_name(s: ServerSettings) -> str:
    """The DNS name nginx verifies the SuperLink's certificate against: nginx 1.22 checks
    DNS names only, never IP addresses (``localhost`` when the certificate names it)."""
    assert s.cert is not None
    try:
        cert = load_certificate(s.cert, "superlink.cert")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (CertsError, x509.ExtensionNotFound):
        names = None
    dns = names.get_values_for_type(x509.DNSName) if names is not None else []
    if not dns:
        raise DeployError(f"superlink.cert {s.cert}: no DNS name among its SANs; nginx verifies "
                          "the SuperLink by DNS name (fedsilo certs init --san localhost)")
    return "localhost" if "localhost" in dns else dns[0]


def write_nginx_conf(s: ServerSettings, p: ProxySettings) -> Path:
    """Write ``state_dir/proxy/nginx.conf``; return its path."""
    root = proxy_dir(s)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    s.log_dir.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(render_nginx_conf(s, p))
    return conf


def nginx_argv(nginx: Path, conf: Path, *, test: bool = False) -> list[str]:
    """nginx's command line: its own prefix, errors on stderr (the supervisor's log)."""
    return [str(nginx), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr",
            *(["-t", "-q"] if test else [])]


def check_proxy(s: ServerSettings, source: Path, timeout: float = 30.0) -> Path:
    """Everything `start_proxy` needs, checked before any process starts; return nginx.conf.

    `DeployError` (one line) on a public SuperLink address, missing certificate, port in
    use, nginx missing, or a configuration nginx itself rejects (``nginx -t``).
    """
    p = resolve_proxy(s, source)
    nginx = nginx_bin()
    if nginx is None:
        raise DeployError("--proxy nginx: nginx not found (Debian: apt-get install nginx)")
    check_port("proxy.port", p.host, p.port)
    conf = write_nginx_conf(s, p)
    res = subprocess.run(nginx_argv(nginx, conf, test=True), capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if "emerg" in ln or "error" in ln]
        raise DeployError(f"--proxy nginx: nginx -t rejected {conf}: "
                          f"{(lines or res.stderr.splitlines() or ['?'])[0]}")
    return conf


def start_proxy(s: ServerSettings, sup: Supervisor, conf: Path,
                timeout: float = 60.0) -> ManagedProcess:
    """Start nginx with ``conf`` under ``sup`` and wait until it listens for the sites."""
    assert s.proxy is not None
    nginx = nginx_bin()
    assert nginx is not None
    proc = sup.start("nginx", nginx_argv(nginx, conf), child_env(), cwd=conf.parent)
    try:
        host = "127.0.0.1" if s.proxy.host in ("0.0.0.0", "") else s.proxy.host
        wait_for_port(proc, host, s.proxy.port, timeout)
    except BaseException:
        sup.procs.remove(proc)
        proc.stop()
        raise
    sup.pids.add_tree(proc.pid)  # its worker too: a SIGKILLed master leaves it holding the port
    return proc


# ------------------------------------------------------------------ status
def exposed_listeners(port: int) -> list[str]:
    """Non-loopback addresses on which something on this host listens on TCP ``port``."""
    out: set[str] = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if not is_loopback(conn.laddr.ip):
            out.add(conn.laddr.ip)
    return sorted(out)


def exposure_warning(s: ServerSettings) -> str | None:
    """One line when the SuperLink's port is reachable beyond loopback (no proxy in front)."""
    exposed = exposed_listeners(s.port)
    if not exposed:
        return None
    return (f"warning: the SuperLink port {s.port} listens on {', '.join(exposed)}, not loopback "
            "only: whoever reaches it can submit, list and stop runs (Control API); set "
            "superlink.host = \"127.0.0.1\" and start with --proxy nginx")


__all__ = [
    "FLEET_ROUTES", "PROXIES", "REFUSAL", "ProxySettings", "check_loopback", "check_proxy",
    "exposed_listeners", "exposure_warning", "is_loopback", "nginx_argv", "nginx_bin",
    "parse_proxy", "render_nginx_conf", "resolve_proxy", "start_proxy", "write_nginx_conf",
]

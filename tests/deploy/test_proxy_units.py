"""Issue 24 points 2 and 5: the nginx configuration ``server start --proxy nginx`` writes,
the refusal of a proxy in front of a public SuperLink, and ``server status``'s warning
(no SuperLink started: configuration, one-line errors, real sockets)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from fedsilo.cli import main
from fedsilo.server.certs import CertsLayout, init_certs
from fedsilo.server.deploy import read_server_settings
from fedsilo.server.deploy_procs import DeployError, descendants
from fedsilo.server.proxy import (
    FLEET_PREFIX,
    FLEET_ROUTES,
    REFUSAL,
    exposed_listeners,
    exposure_warning,
    is_loopback,
    nginx_argv,
    nginx_bin,
    resolve_proxy,
    write_nginx_conf,
)

from .procs import free_port

PUBLIC = ("fedsilo server start: error: {path}: superlink.host = '0.0.0.0' is not a loopback "
          "address: with a proxy the SuperLink must listen on 127.0.0.1 (or ::1) only, the "
          "sites reach it through [proxy] host and port")


def _server_toml(tmp: Path, certs: CertsLayout, proxy: dict | None = None, **link: object) -> Path:
    doc: dict = {
        "superlink": {"port": free_port(), "state_dir": str(tmp / "state"),
                      "ca_cert": str(certs.ca_cert), "cert": str(certs.server_cert),
                      "key": str(certs.server_key), **link},
        "sites": {"a": str(certs.site_public_key("a"))},
    }
    if proxy is not None:
        doc["proxy"] = proxy
    path = tmp / "server.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    before = set(descendants(os.getpid()))
    code = main(argv)
    err = capsys.readouterr().err
    assert {p for p in descendants(os.getpid()) if Path(f"/proc/{p}").exists()} <= before
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    return code, err.strip()


# ------------------------------------------------------------------ bad input
def test_proxy_table_with_a_public_superlink_is_refused(tmp_path: Path, certs: CertsLayout,
                                                        capsys) -> None:
    path = _server_toml(tmp_path, certs, {"port": free_port()}, host="0.0.0.0")
    code, err = _one_line(["server", "start", "--config", str(path)], capsys)
    assert (code, err) == (2, PUBLIC.format(path=path))
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_proxy_flag_with_a_public_superlink_is_refused(tmp_path: Path, certs: CertsLayout,
                                                       capsys) -> None:
    path = _server_toml(tmp_path, certs, host="0.0.0.0")  # no [proxy]: --proxy alone
    code, err = _one_line(["server", "start", "--config", str(path), "--proxy", "nginx"], capsys)
    assert (code, err) == (2, PUBLIC.format(path=path))
    assert not (tmp_path / "state" / "proxy").exists()


@pytest.mark.parametrize(("proxy", "message"), [
    ({"port": "9443"}, "proxy.port must be a int, got '9443'"),
    ({"port": 70000}, "proxy.port must be in 1..65535, got 70000"),
    ({"host": "::"}, "proxy.host '::': IPv6 listen addresses are not supported; use 0.0.0.0 or "
                     "an IPv4 address"),
    ({"listen": "0.0.0.0"}, "unknown keys ['listen'] in [proxy]; accepted: ['cert', 'host', 'key', 'port']"),
])
def test_malformed_proxy_table(tmp_path: Path, certs: CertsLayout, proxy: dict, message: str,
                               capsys) -> None:
    path = _server_toml(tmp_path, certs, proxy)
    code, err = _one_line(["server", "start", "--config", str(path), "--proxy", "nginx"], capsys)
    assert (code, err) == (2, f"fedsilo server start: error: {path}: {message}")


def test_proxy_needs_its_own_certificate_when_the_superlink_is_insecure(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps({"superlink": {"port": free_port(), "insecure": True},
                                   "proxy": {"port": free_port()}}))
    s = read_server_settings(path)
    with pytest.raises(DeployError) as exc:
        resolve_proxy(s, path)
    assert str(exc.value) == (f"{path}: proxy.cert and proxy.key are required when [superlink] "
                              "has no cert and key (insecure = true)")


def test_proxy_port_must_differ_from_the_superlink_port(tmp_path: Path, certs: CertsLayout) -> None:
    path = _server_toml(tmp_path, certs, {"port": 9999}, port=9999)
    with pytest.raises(DeployError, match=r"proxy.port 9999 is superlink.port too"):
        resolve_proxy(read_server_settings(path), path)


def test_superlink_certificate_without_a_dns_name(tmp_path: Path) -> None:
    ip_only = init_certs(tmp_path / "certs", ["127.0.0.1"], ["a"])
    path = _server_toml(tmp_path, ip_only, {"port": free_port()})
    s = read_server_settings(path)
    with pytest.raises(DeployError) as exc:
        write_nginx_conf(s, resolve_proxy(s, path))
    assert str(exc.value) == (f"superlink.cert {ip_only.server_cert}: no DNS name among its SANs; "
                              "nginx verifies the SuperLink by DNS name (fedsilo certs init "
                              "--san localhost)")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("fl.example.org", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# ------------------------------------------------------------------ the configuration
def test_fleet_routes_are_flower_fleet_router_exactly() -> None:
    """A Flower upgrade that adds or renames a Fleet route fails here, not at the sites."""
    from flwr.superlink.routers.fleet.router import router

    assert sorted(r.path for r in router.routes) == sorted(FLEET_PREFIX + r for r in FLEET_ROUTES)
    import flwr.supernode.fleet_http_client as client

    called = {ln.split('"')[1] for ln in Path(client.__file__).read_text().splitlines()
              if 'path="' in ln}
    assert called == {FLEET_PREFIX + r for r in FLEET_ROUTES}


def test_nginx_conf_forwards_only_exact_fleet_routes(tmp_path: Path, certs: CertsLayout) -> None:
    door = free_port()
    path = _server_toml(tmp_path, certs, {"host": "0.0.0.0", "port": door}, port=9092)
    s = read_server_settings(path)
    conf = write_nginx_conf(s, resolve_proxy(s, path))
    text = conf.read_text()
    locations = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("location ")]
    assert locations == [f"location = {FLEET_PREFIX}{r} {{" for r in FLEET_ROUTES] + ["location / {"]
    passes = [ln.strip() for ln in text.splitlines() if "proxy_pass" in ln]
    assert passes == [f"proxy_pass https://superlink{FLEET_PREFIX}{r};" for r in FLEET_ROUTES]
    assert f"listen 0.0.0.0:{door} ssl;" in text
    assert "server 127.0.0.1:9092;" in text
    assert f"ssl_certificate {certs.server_cert};" in text
    assert f"proxy_ssl_trusted_certificate {certs.ca_cert};" in text
    assert text.count("proxy_ssl_verify on;") == len(FLEET_ROUTES)
    assert text.count("proxy_ssl_name localhost;") == len(FLEET_ROUTES)
    assert f"return 403 '{{\"detail\": \"{REFUSAL}\"}}';" in text
    assert "/v1/control" not in text and "/v1/runtime" not in text


def test_insecure_superlink_gets_plain_http_upstream(tmp_path: Path, certs: CertsLayout) -> None:
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps({
        "superlink": {"port": 9092, "insecure": True, "state_dir": "st"},
        "proxy": {"port": 9443, "cert": str(certs.server_cert), "key": str(certs.server_key)}}))
    s = read_server_settings(path)
    text = write_nginx_conf(s, resolve_proxy(s, path)).read_text()
    assert "proxy_pass http://superlink/v1/fleet/pull-messages;" in text
    assert "proxy_ssl" not in text
    assert "listen 0.0.0.0:9443 ssl;" in text


@pytest.mark.skipif(nginx_bin() is None, reason="nginx is not installed (apt-get install -y nginx)")
def test_nginx_accepts_the_generated_conf(tmp_path: Path, certs: CertsLayout) -> None:
    path = _server_toml(tmp_path, certs, {"port": free_port()})
    s = read_server_settings(path)
    conf = write_nginx_conf(s, resolve_proxy(s, path))
    res = subprocess.run(nginx_argv(nginx_bin(), conf, test=True), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ status
@pytest.fixture
def exposed() -> Iterator[int]:
    """A port something listens on at every address, closing each connection at once
    (a SuperLink bound to 0.0.0.0, as far as the exposure check can tell)."""
    with socket.socket() as srv:
        srv.bind(("0.0.0.0", 0))
        srv.listen()
        stop = threading.Event()

        def serve() -> None:
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield srv.getsockname()[1]
        finally:
            stop.set()
            thread.join()


def test_exposure_warning_for_a_public_listener(tmp_path: Path, exposed: int) -> None:
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps({"superlink": {"host": "0.0.0.0", "port": exposed, "insecure": True}}))
    assert exposed_listeners(exposed) == ["0.0.0.0"]
    assert exposure_warning(read_server_settings(path)) == (
        f"warning: the SuperLink port {exposed} listens on 0.0.0.0, not loopback only: whoever "
        "reaches it can submit, list and stop runs (Control API); set superlink.host = "
        "\"127.0.0.1\" and start with --proxy nginx")


def test_no_warning_for_a_loopback_listener(tmp_path: Path) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        path = tmp_path / "server.toml"
        path.write_text(tomli_w.dumps({"superlink": {"port": port, "insecure": True}}))
        assert exposed_listeners(port) == []
        assert exposure_warning(read_server_settings(path)) is None


def test_status_prints_the_warning_first(tmp_path: Path, exposed: int, capsys) -> None:
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps({"superlink": {"host": "0.0.0.0", "port": exposed,
                                                 "insecure": True, "state_dir": "state"}}))
    code = main(["server", "status", "--server", str(path)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1  # the listener is no SuperLink: the status query itself fails
    assert lines[0] == (f"fedsilo server status: warning: the SuperLink port {exposed} listens on "
                        "0.0.0.0, not loopback only: whoever reaches it can submit, list and stop "
                        "runs (Control API); set superlink.host = \"127.0.0.1\" and start with "
                        "--proxy nginx")
    assert lines[1].startswith("fedsilo server status: error: flwr supernode ls failed")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run installs nginx first, but the line it runs is still the README's second command."""
    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    ci = (repo / ".ci" / "run").read_text().rstrip("\n").splitlines()
    assert ci[-1] == readme.splitlines()[1]
    assert any("apt-get install -y -qq nginx" in ln for ln in ci)

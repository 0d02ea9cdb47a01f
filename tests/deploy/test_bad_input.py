"""Bad input to ``fedsilo server start`` / ``site start`` / ``server run``: one clear line,
non-zero exit, and no process left behind (issue 7, point 9)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from fedsilo.cli import main
from fedsilo.server.certs import CertsLayout, init_certs
from fedsilo.server.deploy_procs import descendants

from .conftest import write_site_toml
from .procs import BIN, env_for, free_port


def _children() -> list[int]:
    return [p for p in descendants(os.getpid()) if Path(f"/proc/{p}").exists()]


def _server_toml(tmp: Path, certs: CertsLayout, port: int, **link: object) -> Path:
    doc = {
        "superlink": {"port": port, "state_dir": str(tmp / "state"), "ca_cert": str(certs.ca_cert),
                      "cert": str(certs.server_cert), "key": str(certs.server_key), **link},
        "sites": {"a": str(certs.site_public_key("a"))},
    }
    path = tmp / "server.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    before = set(_children())
    code = main(argv)
    err = capsys.readouterr().err
    assert set(_children()) - before == set(), "a process was left running"
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    return code, err.strip()


def test_server_missing_certificate(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    path = _server_toml(tmp_path, certs, free_port(), cert=str(tmp_path / "nope.pem"))
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err == f"fedsilo server start: error: server certificate {tmp_path / 'nope.pem'}: file not found"
    assert not (tmp_path / "state").exists()


def test_server_certificate_from_another_ca(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    other = init_certs(tmp_path / "other", ["127.0.0.1"], [])
    path = _server_toml(tmp_path, certs, free_port(), cert=str(other.server_cert), key=str(other.server_key))
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err.endswith(f"server certificate {other.server_cert} is not signed by the CA {certs.ca_cert}")


def test_server_certificate_not_matching_key(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    other = init_certs(tmp_path / "other", ["127.0.0.1"], [])
    path = _server_toml(tmp_path, certs, free_port(), key=str(other.server_key))
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err.endswith(f"server certificate {certs.server_cert} does not match the key {other.server_key}")


def test_server_unreadable_site_key(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    path = _server_toml(tmp_path, certs, free_port())
    bad = tmp_path / "a.pub"
    bad.write_text("ssh-rsa garbage\n")
    text = path.read_text().replace(str(certs.site_public_key("a")), str(bad))
    path.write_text(text)
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err.endswith(f"site public key {bad}: not an OpenSSH public key")


def test_server_port_in_use(tmp_path: Path, certs: CertsLayout, listening: int, capsys) -> None:
    path = _server_toml(tmp_path, certs, listening)
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err == f"fedsilo server start: error: superlink.port: 127.0.0.1:{listening} is already in use"


def test_server_toml_without_tls_files(tmp_path: Path, capsys) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[superlink]\nport = 9092\n[sites]\na = "a.pub"\n')
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err.endswith("[superlink] needs ca_cert, cert and key (or insecure = true for loopback tests)")


def test_server_run_missing_server_toml(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run.toml"
    run.write_text("rounds = 1\n")
    code, err = _run(["server", "run", "--config", str(run), "--server", str(tmp_path / "x.toml")], capsys)
    assert code == 2
    assert err == f"fedsilo server run: error: --config: file not found: {tmp_path / 'x.toml'}"


def _tls_site(tmp: Path, certs: CertsLayout, **fields: object) -> Path:
    sn = {"insecure": False, "ca_cert": str(certs.ca_cert), "auth_key": str(certs.site_key("a")),
          "runtime_port": free_port(), "superlink": "127.0.0.1:9"}
    sn.update(fields.pop("supernode", {}))  # type: ignore[arg-type]
    return write_site_toml(tmp / "site.toml", supernode=sn, **fields)


def test_site_ok_passes_the_check(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    path = _tls_site(tmp_path, certs)
    assert main(["site", "start", "--config", str(path), "--check"]) == 0
    assert capsys.readouterr().out == "fedsilo site: a: site.toml, trainer, keys and port OK\n"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"trainer": "deploy.fake_trainers:missing"},
         "trainer 'deploy.fake_trainers:missing': deploy.fake_trainers has no function 'missing'"),
        ({"trainer": "deploy.not_here:make"},
         "trainer 'deploy.not_here:make': cannot import 'deploy.not_here'"),
        ({"trainer": "deploy.fake_trainers:wrong_type"},
         "trainer 'deploy.fake_trainers:wrong_type' returned dict, expected a fedsilo.client.Trainer"),
    ],
)
def test_site_bad_entry_point(tmp_path: Path, certs: CertsLayout, capsys, fields, expected) -> None:
    path = _tls_site(tmp_path, certs, **fields)
    code, err = _run(["site", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err.startswith(f"fedsilo site start: error: {path}: {expected}")


def test_site_missing_ca(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    path = _tls_site(tmp_path, certs, supernode={"ca_cert": "missing-ca.pem"})
    code, err = _run(["site", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err == f"fedsilo site start: error: {path}: CA certificate {tmp_path / 'missing-ca.pem'}: file not found"


def test_site_unreadable_auth_key(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    key = tmp_path / "auth_key"
    shutil.copy(certs.server_key, key)  # a PEM key, not an OpenSSH one
    path = _tls_site(tmp_path, certs, supernode={"auth_key": str(key)})
    code, err = _run(["site", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err.endswith(f"SuperNode auth key {key}: not an unencrypted OpenSSH private key")


def test_site_lineage_key_world_readable(tmp_path: Path, certs: CertsLayout, capsys) -> None:
    path = _tls_site(tmp_path, certs)
    key = tmp_path / "lineage.pem"
    key.write_text("x")
    key.chmod(0o644)
    code, err = _run(["site", "start", "--config", str(path)], capsys)
    assert code == 2
    assert "key file permissions are 0644; expected 0600" in err


def test_site_runtime_port_in_use(tmp_path: Path, certs: CertsLayout, listening: int, capsys) -> None:
    path = _tls_site(tmp_path, certs, supernode={"runtime_port": listening})
    code, err = _run(["site", "start", "--config", str(path)], capsys)
    assert code == 2
    assert err == f"fedsilo site start: error: supernode.runtime_port: 127.0.0.1:{listening} is already in use"


def test_cli_process_exit_code_and_single_line(tmp_path: Path, certs: CertsLayout, listening: int) -> None:
    """The same through the installed ``fedsilo`` executable: exit 2, one stderr line, no traceback."""
    path = _server_toml(tmp_path, certs, listening)
    res = subprocess.run([str(BIN / "fedsilo"), "server", "start", "--config", str(path)],
                         capture_output=True, text=True, timeout=120, env=env_for(tmp_path / "home"))
    assert res.returncode == 2
    assert res.stderr == f"fedsilo server start: error: superlink.port: 127.0.0.1:{listening} is already in use\n"


@pytest.mark.network
def test_superlink_that_fails_to_start_is_reported_and_gone(tmp_path: Path, capsys) -> None:
    """A SuperLink that exits at start-up (its database path is a directory): exit 1, one line."""
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps({"superlink": {"port": free_port(), "state_dir": "state", "insecure": True}}))
    (tmp_path / "state" / "superlink.db").mkdir(parents=True)
    code, err = _run(["server", "start", "--config", str(path)], capsys)
    assert code == 1
    assert err.startswith("fedsilo server start: error: superlink exited with code ")


def test_status_without_a_superlink(tmp_path: Path, capsys) -> None:
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps({"superlink": {"port": free_port(), "insecure": True}}))
    code, err = _run(["server", "status", "--server", str(path)], capsys)
    assert code == 1
    assert err == ("fedsilo server status: error: flwr supernode ls failed: Connection to the SuperLink "
                   "is unavailable. Please check your network connection and 'address' in the "
                   "SuperLink connection configuration.")

"""``fedsilo certs init``: CA, server certificate with SANs, site key pairs Flower accepts."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.cli import main
from fedsilo.server.certs import (
    CertsError,
    check_server_tls,
    init_certs,
    load_auth_private_key,
    load_auth_public_key,
    load_certificate,
    parse_sites,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_ca_server_cert_and_site_keys(tmp_path: Path) -> None:
    layout = init_certs(tmp_path / "certs", ["127.0.0.1", "localhost"], ["a", "b"])
    check_server_tls(layout.server_cert, layout.server_key, layout.ca_cert)
    cert = load_certificate(layout.server_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = load_certificate(layout.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for site in ("a", "b"):
        priv = load_auth_private_key(layout.site_key(site))
        pub = load_auth_public_key(layout.site_public_key(site))
        assert isinstance(priv.curve, ec.SECP384R1)
        assert priv.public_key().public_numbers() == pub.public_numbers()
        assert layout.site_public_key(site).read_text().startswith("ecdsa-sha2-nistp384 ")
        assert _mode(layout.site_key(site)) == 0o600
    for private in (layout.ca_key, layout.server_key, layout.lineage_key):
        assert _mode(private) == 0o600
    assert _mode(layout.root) == 0o700


def test_flower_accepts_the_site_keys(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    layout = init_certs(tmp_path, ["127.0.0.1"], ["site-1"])
    raw = try_load_public_key(layout.site_public_key("site-1"))
    assert len(raw) > 90  # DER/SEC1 bytes of a P-384 point


def test_init_again_keeps_keys_and_adds_sites(tmp_path: Path) -> None:
    layout = init_certs(tmp_path, ["127.0.0.1"], ["a"])
    before = {p: p.read_bytes() for p in (layout.ca_key, layout.server_key, layout.site_key("a"))}
    init_certs(tmp_path, ["127.0.0.1"], ["a", "b"])
    assert {p: p.read_bytes() for p in before} == before
    assert layout.site_key("b").exists()


def test_mismatched_server_certificate_is_named(tmp_path: Path) -> None:
    one = init_certs(tmp_path / "one", ["127.0.0.1"], [])
    two = init_certs(tmp_path / "two", ["127.0.0.1"], [])
    with pytest.raises(CertsError, match="is not signed by the CA"):
        check_server_tls(one.server_cert, one.server_key, two.ca_cert)
    with pytest.raises(CertsError, match="does not match the key"):
        check_server_tls(one.server_cert, two.server_key, one.ca_cert)


@pytest.mark.parametrize(
    ("sites", "message"),
    [("a,,b", "'' is not a site id"), ("a,a", "duplicate site ids"), ("a b", "'a b' is not a site id")],
)
def test_bad_site_lists(sites: str, message: str) -> None:
    with pytest.raises(CertsError, match=message):
        parse_sites(sites)


def test_cli_bad_san_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certs", "init", str(tmp_path / "c"), "--san", "not a host", "--sites", "a"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "fedsilo certs init: error: --san: 'not a host' is neither an IP address nor a DNS name\n"
    assert not (tmp_path / "c").exists()


def test_cli_prints_lineage_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsilo.lineage.keys import key_fingerprint, load_or_create_key, public_key_hex

    assert main(["certs", "init", str(tmp_path), "--san", "127.0.0.1", "--sites", "a,b,c"]) == 0
    fp = key_fingerprint(public_key_hex(load_or_create_key(tmp_path / "server-lineage.pem")))
    assert f"fingerprint {fp}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "sites").iterdir()) == ["a", "b", "c"]

"""Certificates and keys for a deployment: ``fedsilo certs init DIR``.

Writes, with `cryptography` only (no ``openssl`` subprocess)::

    DIR/ca.pem, DIR/ca.key                 self-signed CA (EC P-384)
    DIR/server.pem, DIR/server.key         SuperLink TLS certificate (SANs given) signed by the CA
    DIR/server-lineage.pem                 the server's Ed25519 lineage signing key
    DIR/sites/<site>/auth_key              the site's SuperNode authentication key (OpenSSH EC P-384)
    DIR/sites/<site>/auth_key.pub          its public key (OpenSSH), registered at the SuperLink

Private keys are written 0600 (directories 0700), atomically, and never overwritten:
running ``init`` again on the same directory adds missing sites and keeps what exists.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.common.keyfiles import (
    CertsError,
    check_server_tls,
    load_auth_private_key,
    load_auth_public_key,
    load_certificate,
    load_private_pem,
)

__all__ = ["CURVE", "VALID_DAYS", "CertsError", "CertsLayout", "check_server_tls", "init_certs",
           "load_auth_private_key", "load_auth_public_key", "load_certificate", "load_private_pem",
           "openssh_public", "parse_sites"]

SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CURVE = ec.SECP384R1()
VALID_DAYS = 365


@dataclass
class CertsLayout:
    """Where `init_certs` puts each file under its directory."""

    root: Path
    sites: list[str] = field(default_factory=list)

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def lineage_key(self) -> Path:
        return self.root / "server-lineage.pem"

    def site_key(self, site: str) -> Path:
        """The site's SuperNode authentication private key (OpenSSH)."""
        return self.root / "sites" / site / "auth_key"

    def site_public_key(self, site: str) -> Path:
        """The site's SuperNode authentication public key (OpenSSH)."""
        return self.root / "sites" / site / "auth_key.pub"


def parse_sites(text: str) -> list[str]:
    """``"a,b,c"`` -> ``["a", "b", "c"]``; `CertsError` on an empty or malformed site id."""
    sites = [s.strip() for s in text.split(",")]
    for s in sites:
        if not SITE_ID.fullmatch(s):
            raise CertsError(
                f"--sites: {s!r} is not a site id (letters, digits, '_', '.', '-'; 1-64 chars)"
            )
    if len(set(sites)) != len(sites):
        raise CertsError(f"--sites: duplicate site ids in {text!r}")
    return sites


def init_certs(root: Path, sans: list[str], sites: list[str]) -> CertsLayout:
    """Create (or complete) a certificate directory.

    Parameters
    ----------
    root : the directory; created 0700 if missing.
    sans : subject alternative names of the SuperLink's TLS certificate (IP addresses
        or DNS names the sites and the operator use to reach it); at least one. They
        apply when the server certificate is created; an existing one is kept (delete
        ``server.pem`` and ``server.key`` to reissue).
    sites : site ids that get a SuperNode authentication key pair.
    """
    if not sans:
        raise CertsError("--san: give at least one address or DNS name of the SuperLink")
    san_entries = [_san(s) for s in sans]
    layout = CertsLayout(Path(root), list(sites))
    _mkdir_private(layout.root)
    if layout.ca_cert.exists() != layout.ca_key.exists():
        raise CertsError(f"{layout.root}: ca.pem and ca.key must both exist or both be absent")
    if not layout.ca_key.exists():
        ca_key = ec.generate_private_key(CURVE)
        _write_private(layout.ca_key, _pem_private(ca_key))
        _write_public(layout.ca_cert, _ca_certificate(ca_key).public_bytes(serialization.Encoding.PEM))
    ca_key = load_private_pem(layout.ca_key)
    ca_cert = load_certificate(layout.ca_cert)
    if not layout.server_key.exists():
        key = ec.generate_private_key(CURVE)
        _write_private(layout.server_key, _pem_private(key))
        cert = _server_certificate(key, ca_key, ca_cert, san_entries)
        _write_public(layout.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    if not layout.lineage_key.exists():
        from fedsilo.lineage.keys import load_or_create_key

        load_or_create_key(layout.lineage_key)
    for site in sites:
        _mkdir_private(layout.root / "sites")
        _mkdir_private(layout.site_key(site).parent)
        if layout.site_key(site).exists():
            continue
        key = ec.generate_private_key(CURVE)
        _write_private(
            layout.site_key(site),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption()),
        )
        _write_public(layout.site_public_key(site), openssh_public(key.public_key(), site))
    return layout


def openssh_public(key: ec.EllipticCurvePublicKey, comment: str = "") -> bytes:
    """One-line OpenSSH public key (``ecdsa-sha2-nistp384 AAAA... comment``)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + (f" {comment}".encode() if comment else b"") + b"\n"


def _san(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", text):
        raise CertsError(f"--san: {text!r} is neither an IP address nor a DNS name")
    return x509.DNSName(text)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsilo federation CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsilo SuperLink")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# ------------------------------------------------------------------ files
def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write to a 0600 temporary file, fsync, chmod, then rename into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

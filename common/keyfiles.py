"""Reading a deployment's certificates and keys, with one-line errors naming the file.

The PEM certificates and keys that the SuperLink (TLS) and each SuperNode (TLS root, the
authentication key) read, loaded and checked before any process starts, by both
``fedsilo server`` (`fedsilo.server.deploy`) and ``fedsilo site`` (`fedsilo.client.deploy`).
Writing them is ``fedsilo certs init`` (`fedsilo.server.certs`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import FedsiloError


class CertsError(FedsiloError, ValueError):
    """Bad input for certificate or key handling (one line, names the file or option)."""



def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """A PEM certificate; `CertsError` naming the file when missing or malformed."""
    data = read_file(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertsError(f"{what} {path}: not a PEM X.509 certificate") from None


def load_private_pem(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM EC private key; `CertsError` when missing, unreadable or malformed."""
    data = read_file(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertsError(f"{what} {path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{what} {path}: expected an EC private key, got {type(key).__name__}")
    return key


def load_auth_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A SuperNode authentication key (unencrypted OpenSSH EC private key, as Flower reads it)."""
    data = read_file(path, "SuperNode auth key")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertsError(
            f"SuperNode auth key {path}: not an unencrypted OpenSSH private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"SuperNode auth key {path}: expected an EC key, got {type(key).__name__}")
    return key


def load_auth_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A SuperNode authentication public key (OpenSSH one-liner, NIST EC curve)."""
    data = read_file(path, "site public key")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError):
        raise CertsError(f"site public key {path}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertsError(f"site public key {path}: expected an EC key, got {type(key).__name__}")
    return key


def check_server_tls(cert_path: Path, key_path: Path, ca_path: Path) -> None:
    """The server certificate matches its key and is signed by the CA; `CertsError` if not."""
    cert = load_certificate(cert_path, "server certificate")
    key = load_private_pem(key_path, "server TLS key")
    ca = load_certificate(ca_path, "CA certificate")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CertsError(f"server certificate {cert_path} does not match the key {key_path}")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise CertsError(f"server certificate {cert_path} is not signed by the CA {ca_path}") from None


# ------------------------------------------------------------------ building


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertsError(f"{what} {path}: file not found") from None
    except IsADirectoryError:
        raise CertsError(f"{what} {path}: is a directory, expected a file") from None
    except PermissionError:
        raise CertsError(f"{what} {path}: cannot read (permission denied)") from None

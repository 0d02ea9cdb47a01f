"""Ed25519 identity keys for the server and the sites (stored as PEM, mode 0600)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import sha256_hex
from .errors import LineageError

_HEX64 = re.compile(r"[0-9a-f]{64}")
# raw public key -> the file its private key was loaded from, in this process (see key_file)
_SOURCES: dict[bytes, Path] = {}


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 private key at ``path``, creating it on first use.

    A new key is written as unencrypted PKCS#8 PEM with mode 0600; a missing parent
    directory is created with mode 0700. Creation is atomic (write to a temporary file,
    then hard-link into place), so two processes racing on first use end up sharing one
    key and a crash never leaves a half-written key file.

    Args:
        path: where the PEM key lives (e.g. ``RUN_DIR/sites/<site_id>/key.pem``).

    Raises:
        LineageError: if the existing file is readable or writable by group/others, is not
            a PEM private key, or holds a key that is not Ed25519.
    """
    path = Path(path)
    if not path.exists():
        _create_key_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise LineageError(
            f"{path}: key file permissions are {mode:04o}; expected 0600 (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise LineageError(f"{path}: cannot read key file ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise LineageError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LineageError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    _SOURCES[key.public_key().public_bytes_raw()] = path.resolve()
    return key


def key_file(key: Ed25519PrivateKey) -> Path | None:
    """The file :func:`load_or_create_key` loaded ``key`` from in this process, if it did.

    Lets a process that must sign again later (a SecAgg+ site's unmask stage, which
    Flower's deployment runtime runs in a fresh process) reload just the key, not
    everything that came with it.
    """
    return _SOURCES.get(key.public_key().public_bytes_raw())


def _create_key_file(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp_name = tempfile.mkstemp(prefix=".key-", dir=parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp_name, path)
    finally:
        os.unlink(tmp_name)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Return the raw 32-byte Ed25519 public key as 64 lowercase hex characters.

    Args:
        key: a private key (its public half is used) or a public key.
    """
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw().hex()


def load_public_key(public_key_hex_: str) -> Ed25519PublicKey:
    """Parse a public key given as 64 lowercase hex characters.

    Raises:
        ValueError: if the string is not 64 lowercase hex characters.
    """
    if not isinstance(public_key_hex_, str) or not _HEX64.fullmatch(public_key_hex_):
        raise ValueError(f"public key must be 64 lowercase hex characters, got {public_key_hex_!r}")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex_))


def key_fingerprint(public_key_hex_: str) -> str:
    """Short, stable identifier of a public key: ``"ed25519:"`` + first 16 hex of SHA-256.

    Args:
        public_key_hex_: the key as returned by :func:`public_key_hex`.

    Raises:
        ValueError: if the string is not 64 lowercase hex characters.
    """
    if not isinstance(public_key_hex_, str) or not _HEX64.fullmatch(public_key_hex_):
        raise ValueError(f"public key must be 64 lowercase hex characters, got {public_key_hex_!r}")
    return "ed25519:" + sha256_hex(bytes.fromhex(public_key_hex_))[:16]

"""An app bundle's identity: its content digest and an Ed25519 signature over it.

A Flower run ships an app bundle (FAB: a zip of ``pyproject.toml`` and the app's files).
Its content digest covers every file except the signature file and Flower's
``.info/CONTENT`` manifest (which lists the signature file too): ``sha256`` of the sorted
lines ``<path> <sha256 of the file>``. ``fedsilo app sign`` and ``fedsilo server run``
(with ``superlink.app_key``) sign that digest (`sign_app_dir`) into `SIGNATURE_FILE`
inside the app directory, so that the signature travels in the bundle; a site checks it
(`signer`) against its code policy (`fedsilo.client.app_code.CodePolicy`). Here, below
both the server and the client, so that each may use it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNATURE_FILE = "fedsilo-app-signature.json"
"""Where ``fedsilo app sign`` puts the signature inside the app directory (and so the bundle)."""
_NOT_CONTENT = {SIGNATURE_FILE, ".info/CONTENT"}

# files a Python process may import or load: a bundle with any of them carries code
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".pyx")
_CONTEXT = b"fedsilo app bundle v1\n"  # domain separation: this signature means "run this bundle"


class AppCodeError(ValueError):
    """A bundle, signature or code policy that cannot be read (one line)."""


@dataclass
class Bundle:
    """What a site needs to know about an app bundle before running anything from it."""

    digest: str
    clientapp: str
    code_files: list[str]
    signature: dict[str, Any] | None


def content_digest(files: dict[str, bytes]) -> str:
    """``sha256:<hex>`` over the bundle's files (path -> bytes), signature and manifest excluded."""
    lines = sorted(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in files.items()
                   if name not in _NOT_CONTENT)
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def read_bundle(fab: bytes) -> Bundle:
    """Read a FAB's files (nothing is extracted to disk, nothing imported); `AppCodeError`."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as zf:
            files = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise AppCodeError(f"the app bundle is not a readable zip ({exc})") from None
    try:
        doc = tomllib.loads(files.get("pyproject.toml", b"").decode())
        clientapp = str(doc["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        clientapp = ""
    signature = None
    if SIGNATURE_FILE in files:
        try:
            signature = json.loads(files[SIGNATURE_FILE])
        except (UnicodeDecodeError, ValueError):
            signature = {}
    code = sorted(n for n in files if n.lower().endswith(_CODE_SUFFIXES))
    return Bundle(content_digest(files), clientapp, code, signature)


def app_dir_files(app_dir: Path) -> dict[str, bytes]:
    """The files Flower's own builder puts into the bundle of ``app_dir`` (as ``flwr run`` does)."""
    from flwr.cli.build import build_fab_from_disk

    if not (Path(app_dir) / "pyproject.toml").is_file():
        raise AppCodeError(f"{app_dir}: no pyproject.toml (not a Flower app directory)")
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(Path(app_dir)))) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def sign_app_dir(app_dir: Path, key: Ed25519PrivateKey, out: Path | None = None) -> dict[str, Any]:
    """Sign the content digest of ``app_dir``'s bundle; write `SIGNATURE_FILE` (or ``out``)."""
    from fedsilo.lineage.keys import key_fingerprint, public_key_hex

    digest = content_digest(app_dir_files(app_dir))
    public = public_key_hex(key)
    doc = {"digest": digest, "public_key": public, "key": key_fingerprint(public),
           "signature": key.sign(_CONTEXT + digest.encode()).hex()}
    target = Path(out) if out is not None else Path(app_dir) / SIGNATURE_FILE
    target.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def signer(bundle: Bundle) -> str | None:
    """The public key (hex) whose valid signature over this bundle's digest it carries, or None."""
    from fedsilo.lineage.keys import load_public_key

    sig = bundle.signature or {}
    if sig.get("digest") != bundle.digest:
        return None  # signed another content (tampered after signing) or no signature
    try:
        key = load_public_key(str(sig.get("public_key", "")))
        key.verify(bytes.fromhex(str(sig.get("signature", ""))), _CONTEXT + bundle.digest.encode())
    except (ValueError, InvalidSignature):
        return None
    return str(sig["public_key"])


def load_signing_key(path: Path, option: str) -> Any:
    """The Ed25519 private key at ``path``; `AppCodeError` naming ``option`` (never creates one)."""
    from fedsilo.lineage.errors import LineageError
    from fedsilo.lineage.keys import load_or_create_key

    if not Path(path).is_file():
        raise AppCodeError(f"{option} {path}: file not found (an Ed25519 private key, PEM)")
    try:
        return load_or_create_key(Path(path))
    except (LineageError, OSError, ValueError) as exc:
        raise AppCodeError(f"{option} {path}: not an Ed25519 private key ({exc})") from None

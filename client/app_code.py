"""Which app bundle (Flower FAB) a site runs: content digest, signatures, the site's code policy.

A Flower run ships an app bundle (a zip: ``pyproject.toml`` plus the app's files) and the
SuperNode, by default, installs it and imports the ClientApp its pyproject names. A site
that runs `fedsilo.client.app_runner` instead checks the bundle first, against its
`CodePolicy` (``[policy]`` of ``site.toml``):

* default (no lists): only fedsilo's own ClientApp -- the bundle must name
  `OWN_CLIENTAPP` and carry no Python code of its own; the site then runs the ClientApp
  installed with fedsilo, never code from the bundle;
* ``accepted_app_digests = ["sha256:..."]`` and/or ``trusted_app_keys = ["ed25519:..."]``:
  only bundles with a listed content digest, or signed (`SIGNATURE_FILE`, written by
  ``fedsilo app sign``) by a listed key, run; such a bundle may carry its own ClientApp.

The content digest covers every file of the bundle except the signature file and Flower's
``.info/CONTENT`` manifest (which lists the signature file too): ``sha256`` of the sorted
lines ``<path> <sha256 of the file>``. Flower's own FAB verification (``flower-supernode
--trusted-entities``) needs verification records that only Flower Hub apps carry: the
open-source SuperLink attaches none to a bundle submitted with ``flwr run``, so the
signature travels inside the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

OWN_CLIENTAPP = "fedsilo.server.flower_app:client_app"
# the same installed ClientApp under the name app bundles used before it moved out of
# fedsilo.simulations (still re-exported there)
OWN_CLIENTAPPS = (OWN_CLIENTAPP, "fedsilo.simulations.flower_app:client_app")
"""The ClientApp installed with fedsilo (``[tool.flwr.app.components].clientapp``)."""
SIGNATURE_FILE = "fedsilo-app-signature.json"
"""Where ``fedsilo app sign`` puts the signature inside the app directory (and so the bundle)."""
_NOT_CONTENT = {SIGNATURE_FILE, ".info/CONTENT"}
# files a Python process may import or load: a bundle with any of them carries code
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".pyx")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"ed25519:[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
APP_DIGEST_ENV = "FEDSILO_APP_DIGEST"
"""Set by `fedsilo.client.app_runner` to the digest of the bundle the process runs."""
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


@dataclass
class CodePolicy:
    """The site's rule for app bundles (see the module docstring)."""

    accepted_app_digests: list[str] = field(default_factory=list)
    trusted_app_keys: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "[policy]") -> CodePolicy:
        """Check the two lists' formats; `AppCodeError` naming the option and the expected form."""
        out = cls()
        for name, pattern, form in (
            ("accepted_app_digests", (_DIGEST,), "'sha256:<64 lowercase hex>'"),
            ("trusted_app_keys", (_FINGERPRINT, _HEX64),
             "'ed25519:<16 lowercase hex>' (a key fingerprint) or 64 lowercase hex (a public key)"),
        ):
            values = data.get(name, [])
            if not isinstance(values, list):
                raise AppCodeError(f"{where} {name} must be a list of {form}, got {values!r}")
            for value in values:
                if not isinstance(value, str) or not any(p.fullmatch(value) for p in pattern):
                    raise AppCodeError(f"{where} {name}: {value!r} is not {form}")
            setattr(out, name, list(values))
        return out

    @property
    def default(self) -> bool:
        """True when the site runs only fedsilo's own ClientApp (no lists)."""
        return not (self.accepted_app_digests or self.trusted_app_keys)

    def decide(self, bundle: Bundle) -> tuple[bool, str]:
        """(run it, why): accepted bundles say how, refused ones why (one line)."""
        if self.default:
            if bundle.clientapp not in OWN_CLIENTAPPS:
                return False, (f"names ClientApp {bundle.clientapp or '(none)'!r}; this site runs "
                               f"only fedsilo's own ({OWN_CLIENTAPP})")
            if bundle.code_files:
                return False, (f"carries Python code of its own ({', '.join(bundle.code_files[:3])}"
                               f"{'...' if len(bundle.code_files) > 3 else ''}); this site runs "
                               "only fedsilo's own ClientApp")
            return True, "fedsilo's own ClientApp"
        if bundle.digest in self.accepted_app_digests:
            return True, "digest listed in accepted_app_digests"
        key = signer(bundle)
        if key is not None and self._trusts(key):
            from fedsilo.lineage.keys import key_fingerprint

            return True, f"signed by trusted key {key_fingerprint(key)}"
        if bundle.signature is None:
            why = "is unsigned"
        elif key is None:
            why = "carries a signature that does not match its content"
        else:
            from fedsilo.lineage.keys import key_fingerprint

            why = f"is signed by {key_fingerprint(key)}, not a key in trusted_app_keys"
        return False, f"{why} and its digest is not in accepted_app_digests"

    def _trusts(self, public_key: str) -> bool:
        from fedsilo.lineage.keys import key_fingerprint

        return public_key in self.trusted_app_keys or key_fingerprint(public_key) in self.trusted_app_keys


def runs_own_clientapp(bundle: Bundle) -> bool:
    """An accepted bundle that names fedsilo's ClientApp and carries no code runs the installed one."""
    return bundle.clientapp in OWN_CLIENTAPPS and not bundle.code_files


def app_digest_field() -> dict[str, str]:
    """``{"app_digest": ...}`` of the bundle this process runs (for handshake replies and the
    site's ledger), or ``{}`` when it was not started by the site's runner."""
    digest = os.environ.get(APP_DIGEST_ENV, "")
    return {"app_digest": digest} if _DIGEST.fullmatch(digest) else {}

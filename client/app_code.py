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

import os
import re
from dataclasses import dataclass, field
from typing import Any

from fedsilo.lineage.app_bundle import (
    SIGNATURE_FILE,
    AppCodeError,
    Bundle,
    app_dir_files,
    content_digest,
    read_bundle,
    sign_app_dir,
    signer,
)

__all__ = ["APP_DIGEST_ENV", "OWN_CLIENTAPP", "OWN_CLIENTAPPS", "SIGNATURE_FILE", "AppCodeError",
           "Bundle", "CodePolicy", "app_dir_files", "app_digest_field", "content_digest",
           "read_bundle", "runs_own_clientapp", "sign_app_dir", "signer"]

OWN_CLIENTAPP = "fedsilo.client.flower_app:client_app"
# the same installed ClientApp under the names older app bundles carry: the site's runner
# (`fedsilo.client.app_runner`) loads it from its own module whatever the bundle calls it
OWN_CLIENTAPPS = (OWN_CLIENTAPP, "fedsilo.server.flower_app:client_app",
                  "fedsilo.simulations.flower_app:client_app")
"""The ClientApp installed with fedsilo (``[tool.flwr.app.components].clientapp``)."""
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"ed25519:[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
APP_DIGEST_ENV = "FEDSILO_APP_DIGEST"
"""Set by `fedsilo.client.app_runner` to the digest of the bundle the process runs."""


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

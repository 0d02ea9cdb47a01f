"""``fedsilo app sign APP_DIR --key KEY`` and ``fedsilo app digest APP_DIR``.

``sign`` signs the content digest of the bundle Flower builds from ``APP_DIR`` (the one
``flwr run APP_DIR`` submits) with an Ed25519 key and writes the signature into the app
directory (`fedsilo.lineage.app_bundle.SIGNATURE_FILE`), so that it travels in the bundle;
a site whose ``[policy] trusted_app_keys`` lists the key runs it. ``digest`` prints the
content digest, for a site's ``[policy] accepted_app_digests``. Exit codes: 0 done, 2 bad
input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def add_app_parser(sub: Any) -> None:
    """Register ``fedsilo app``."""
    p = sub.add_parser("app", help="sign an app bundle, or print its content digest")
    asub = p.add_subparsers(dest="app_command", metavar="COMMAND")
    sign = asub.add_parser("sign", help="sign the app bundle of APP_DIR (Ed25519)")
    sign.add_argument("app_dir", metavar="APP_DIR", help="Flower app directory (with pyproject.toml)")
    sign.add_argument("--key", required=True, metavar="KEY",
                      help="Ed25519 private key (PEM, as `fedsilo certs init` writes lineage keys)")
    sign.add_argument("-o", "--output", metavar="FILE",
                      help="where to write the signature (default: APP_DIR/fedsilo-app-signature.json, "
                           "inside the bundle)")
    sign.set_defaults(handler=_sign)
    digest = asub.add_parser("digest", help="print the content digest of APP_DIR's app bundle")
    digest.add_argument("app_dir", metavar="APP_DIR")
    digest.set_defaults(handler=_digest)
    p.set_defaults(handler=lambda _args: _fail("app", "a command is required: sign or digest"))


def _sign(args: argparse.Namespace) -> int:
    from fedsilo.lineage.app_bundle import (
        SIGNATURE_FILE,
        AppCodeError,
        load_signing_key,
        sign_app_dir,
    )

    app_dir = Path(args.app_dir)
    try:
        key = load_signing_key(Path(args.key), "--key")
        doc = sign_app_dir(app_dir, key, Path(args.output) if args.output else None)
    except AppCodeError as exc:
        return _fail("app sign", str(exc))
    out = args.output or app_dir / SIGNATURE_FILE
    print(f"fedsilo app: signed {doc['digest']} with {doc['key']} -> {out}")
    return 0


def _digest(args: argparse.Namespace) -> int:
    from fedsilo.lineage.app_bundle import AppCodeError, app_dir_files, content_digest

    try:
        print(content_digest(app_dir_files(Path(args.app_dir))))
    except AppCodeError as exc:
        return _fail("app digest", str(exc))
    return 0


def _fail(command: str, message: str) -> int:
    print(f"fedsilo {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE

"""Data fingerprints: what data (and which preprocessing) a site trained on.

The raw data never leaves the site; its fingerprint does. A fingerprint is::

    "sha256:" + sha256(canonical_json({
        "schema": "fedsilo.data/1",
        "source": {"kind": "arrays", "digest": arrays_digest(arrays)}
                | {"kind": "manifest", "files": {name: "sha256:<hex>", ...}},
        "preprocessing": <the declared preprocessing, any JSON object>,
    }))
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .canonical import DIGEST_PREFIX, canonical_json, prefixed_digest
from .digests import arrays_digest

DATA_SCHEMA = "fedsilo.data/1"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20


def data_fingerprint(
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    manifest: Mapping[str, str] | None = None,
    preprocessing: Mapping[str, Any],
) -> str:
    """Fingerprint a site's training data and declared preprocessing.

    Give exactly one of ``arrays`` or ``manifest``.

    Args:
        arrays: the local data as named arrays (e.g. ``{"x": x, "y": y}``), digested with
            :func:`fedsilo.lineage.arrays_digest`.
        manifest: ``{file name: "sha256:<hex>"}`` as built by :func:`manifest_for`, for data
            that lives in files.
        preprocessing: the declared transformations (any JSON object, e.g.
            ``{"scaler": "standard", "version": 2}``); a change here changes the fingerprint.

    Returns:
        ``"sha256:<64 hex>"``.

    Raises:
        ValueError: if both or neither source is given, the manifest is malformed, or
            ``preprocessing`` is not a JSON object.
    """
    if (arrays is None) == (manifest is None):
        raise ValueError("data_fingerprint needs exactly one of arrays= or manifest=")
    if not isinstance(preprocessing, Mapping):
        raise ValueError(
            f"preprocessing must be a mapping (JSON object), got {type(preprocessing).__name__}"
        )
    if arrays is not None:
        source: dict[str, Any] = {"kind": "arrays", "digest": arrays_digest(arrays)}
    else:
        assert manifest is not None
        if not isinstance(manifest, Mapping) or not manifest:
            raise ValueError("manifest must be a non-empty mapping file -> 'sha256:<hex>'")
        for name, digest in manifest.items():
            if not isinstance(name, str) or not isinstance(digest, str):
                raise ValueError(f"manifest entry {name!r}: expected str -> 'sha256:<hex>'")
            if not _DIGEST.fullmatch(digest):
                raise ValueError(f"manifest entry {name!r}: digest must be 'sha256:<64 hex>'")
        source = {"kind": "manifest", "files": dict(manifest)}
    document = {"schema": DATA_SCHEMA, "source": source, "preprocessing": dict(preprocessing)}
    return prefixed_digest(canonical_json(document))


def manifest_for(paths: Iterable[Path], *, root: Path | None = None) -> dict[str, str]:
    """Hash files into a manifest ``{name: "sha256:<hex>"}``.

    Directories are expanded recursively (files only, sorted). Files are read in 1 MiB
    chunks, so size does not matter.

    Args:
        paths: files or directories.
        root: if given, names are POSIX paths relative to ``root`` (use this so the
            fingerprint does not depend on where the data is mounted); otherwise names are
            the paths as given, in POSIX form.

    Raises:
        ValueError: if a path does not exist, or is not under ``root``.
    """
    manifest: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"manifest_for: {path} does not exist or is not a file/directory")
        for file in files:
            if root is not None:
                try:
                    name = file.resolve().relative_to(Path(root).resolve()).as_posix()
                except ValueError:
                    raise ValueError(f"manifest_for: {file} is not under root {root}") from None
            else:
                name = file.as_posix()
            manifest[name] = _file_digest(file)
    return manifest


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return DIGEST_PREFIX + h.hexdigest()

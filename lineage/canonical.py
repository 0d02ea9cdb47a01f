"""Canonical JSON encoding and SHA-256 helpers shared by every lineage digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

SCHEMA_VERSION = "fedsilo.lineage/1"
"""Version tag carried by every lineage record envelope and by the SQLite store."""

DIGEST_PREFIX = "sha256:"

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Canonical means: object keys sorted (by Unicode code point), no whitespace,
    UTF-8 (non-ASCII characters are not escaped), integers in decimal, floats in
    Python's shortest round-trip ``repr`` form, and NaN/Infinity rejected.

    Args:
        obj: a JSON value built from ``dict`` (string keys only), ``list``/``tuple``,
            ``str``, ``int``, ``float``, ``bool`` and ``None``.

    Raises:
        ValueError: if ``obj`` holds a non-finite float, a non-string key or a value
            that JSON cannot represent (e.g. a numpy scalar or bytes).
    """
    _check_keys(obj)
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except ValueError as exc:  # NaN / Infinity
        raise ValueError(f"canonical_json: non-finite float is not allowed ({exc})") from None
    except TypeError as exc:
        raise ValueError(f"canonical_json: value is not JSON-serialisable ({exc})") from None


def _check_keys(obj: Any) -> None:
    """Reject dict keys that ``json`` would silently coerce to strings."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if not isinstance(key, str):
                    raise ValueError(
                        f"canonical_json: object keys must be str, got {type(key).__name__} {key!r}"
                    )
                if isinstance(value, dict | list | tuple):
                    stack.append(value)
        elif isinstance(item, list | tuple):
            stack.extend(v for v in item if isinstance(v, dict | list | tuple))


def canonical_json_parsed(obj: Any) -> bytes:
    """:func:`canonical_json` for a value that came from ``json.loads`` (keys are already
    strings, so the key walk is skipped). Raises ``ValueError`` like :func:`canonical_json`."""
    return _ENCODER.encode(obj).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 of ``data`` (no prefix)."""
    return hashlib.sha256(data).hexdigest()


def prefixed_digest(data: bytes) -> str:
    """Return ``"sha256:" + sha256_hex(data)``, the form every lineage digest takes."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def is_canonical(obj: Any, data: bytes, residual: Any = None) -> bool:
    """Whether ``data`` is exactly :func:`canonical_json_parsed` of ``obj`` (its parse).

    Fast path: ``orjson`` re-encodes ``obj`` with sorted keys. It writes strings, ints,
    ``true``/``false``/``null`` and the structure as Python's ``json`` does; floats are
    where the two may differ (``orjson`` writes ``1e-7`` and ``0.00001`` where Python
    writes ``1e-07`` and ``1e-05``). So: equal bytes, and both encoders agreeing on
    ``residual`` (a part of ``obj`` holding every float of it, see
    :func:`fedsilo.lineage.fastcheck.float_residual`; default ``obj`` itself), settle it;
    anything else is decided by the reference encoder.
    """
    try:
        fast = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        fast = None
    if fast is not None and fast == data:
        part = obj if residual is None else residual
        try:
            if orjson.dumps(part, option=orjson.OPT_SORT_KEYS) == canonical_json_parsed(part):
                return True
        except (TypeError, ValueError, orjson.JSONEncodeError):
            pass
    try:
        return canonical_json_parsed(obj) == data
    except ValueError:
        return False

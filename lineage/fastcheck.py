"""Bulk fast paths of ``lineage verify`` (tested equal to the reference checks).

A long chain holds hundreds of thousands of contributions; checking each one's fields
with the per-field validator (:func:`fedsilo.lineage.schema.validator_for`) and
re-encoding each record with Python's ``json`` costs several microseconds per
contribution, the bulk of a 10,000 x 50 verify. These functions check the same things
column-wise, in C-level loops (``map``, ``str.join``, one regex over a joined column), and
only ever *accept*: whenever a fast check is unsure, the caller runs the reference check,
which then names the failure exactly as it always did.

* :func:`round_body_ok`: a round body is valid per :class:`~fedsilo.lineage.records.RoundRecord`
  (its contributions checked by column; everything else by the reference validator);
* :func:`float_residual`: the parts of a signed envelope that may hold floats, the one
  JSON value on which ``orjson`` and Python's ``json`` may write different bytes
  (:func:`fedsilo.lineage.canonical.is_canonical` compares both encoders on it).
"""

from __future__ import annotations

from dataclasses import fields
from itertools import repeat
from operator import itemgetter
from typing import Any

from .fates import Fate
from .records import RoundRecord, SiteContribution, validate_body

_NONE = type(None)
_PREFIX = "sha256:"
_HEX_DIGITS = b"0123456789abcdef"
_FATES = frozenset(f.value for f in Fate)
# the contribution's field names, from its dataclass (the one schema); ``prev`` may be absent
_EVERY = frozenset(f.name for f in fields(SiteContribution))
_UNCHAINED = _EVERY - {"prev"}
_OPTIONAL = frozenset(f.name for f in fields(RoundRecord)) - {"contributions"}
_KEY_ORDERS = {tuple(sorted(_EVERY)), tuple(sorted(_UNCHAINED))}
_get = {name: itemgetter(name) for name in _EVERY}


def round_body_ok(body: Any) -> bool:
    """Whether ``body`` certainly passes ``validate_body("round", body)``; False: unsure
    (the caller then runs the reference check, which names any failure)."""
    if type(body) is not dict or type(body.get("contributions")) is not list:
        return False
    try:
        validate_body("round", {**body, "contributions": []})
    except ValueError:
        return False
    return contributions_ok(body["contributions"])


def contributions_ok(cs: list[Any]) -> bool:
    """Whether every item of ``cs`` certainly passes the
    :class:`~fedsilo.lineage.records.SiteContribution` validator (column-wise checks)."""
    if not cs:
        return True
    try:
        if set(map(type, cs)) != {dict}:
            return False
        # keys in stored order: canonical JSON (checked before) sorts them
        if not set(map(tuple, cs)) <= _KEY_ORDERS:
            return False
        n = len(cs)
        site_ids = list(map(_get["site_id"], cs))
        if "" in site_ids or len("".join(site_ids)) < n:  # join: every one a str
            return False
        for name in ("update_digest", "data_fingerprint"):
            if not _digests(list(map(_get[name], cs)), n):
                return False
        signatures = list(map(_get["signature"], cs))
        if set(map(len, signatures)) != {128} or not _hex("".join(signatures)):
            return False
        counts = list(map(_get["num_examples"], cs))
        if set(map(type, counts)) != {int} or min(counts) < 0:
            return False
        if not set(map(_get["fate"], cs)) <= _FATES:
            return False
        if set(map(type, map(_get["score"], cs))) != {_NONE}:
            return False
        if set(map(type, map(_get["detail"], cs))) != {dict}:
            return False
        chained = [c["prev"] for c in cs if "prev" in c]
        return _digests(chained, len(chained))
    except (TypeError, KeyError):  # unhashable or missing values: not sure
        return False


def _digests(column: list[Any], n: int) -> bool:
    """Every item a ``'sha256:<64 lowercase hex>'`` string: each 71 characters long and
    starting with the prefix, and what follows the prefixes only lower-case hex."""
    if len(column) != n:
        return False
    if not column:
        return True
    if set(map(len, column)) != {71} or not all(map(str.startswith, column, repeat(_PREFIX))):
        return False
    rest = "".join(column).replace(_PREFIX, "")
    return len(rest) == 64 * n and _hex(rest)


def _hex(text: str) -> bool:
    """Whether ``text`` is only lower-case hex digits (bytes.translate: a C loop)."""
    try:
        return not text.encode("ascii").translate(None, _HEX_DIGITS)
    except UnicodeEncodeError:
        return False


def float_residual(env: Any) -> Any:
    """The part of an envelope that may hold floats: the whole envelope, except that in a
    round body the contributions with no score and an empty detail are left out (their
    other fields are strings, ints and null, or the schema check fails on them)."""
    if type(env) is not dict or env.get("type") != "round":
        return env
    body = env.get("body")
    if type(body) is not dict or type(body.get("contributions")) is not list:
        return env
    keep = [c for c in body["contributions"]
            if type(c) is not dict or c.get("score") is not None or c.get("detail")]
    return {**env, "body": {**body, "contributions": keep}}

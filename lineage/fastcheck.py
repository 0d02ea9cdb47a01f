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
* :func:`float_residual` (:func:`round_residual` for a round body already checked): the
  parts of a signed envelope that may hold floats, the one JSON value on which ``orjson``
  and Python's ``json`` may write different bytes
  (:func:`fedsilo.lineage.canonical.is_canonical` compares both encoders on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from operator import itemgetter
from typing import Any, NamedTuple

from .fates import Fate
from .records import RoundRecord, SiteContribution, validate_body

_NONE = type(None)
_PREFIX = "sha256:"
_HEX_DIGITS = b"0123456789abcdef"
_PREFIX_REST = _PREFIX.encode().translate(None, _HEX_DIGITS)  # b"sh:"
_FATES = frozenset(f.value for f in Fate)
# the contribution's field names, from its dataclass (the one schema); ``prev`` may be absent
_EVERY = frozenset(f.name for f in fields(SiteContribution))
_UNCHAINED = _EVERY - {"prev"}
_OPTIONAL = frozenset(f.name for f in fields(RoundRecord)) - {"contributions"}
# round body fields that hold no float once the body passed its schema check
_FLOATLESS = frozenset({"contributions", "sampled", "replied", "accepted", "dropped"})
_CHAINED_ORDER = tuple(sorted(_EVERY))
_UNCHAINED_ORDER = tuple(sorted(_UNCHAINED))
# a contribution's values in field-name order (the columns, transposed by zip)
_CHAINED_ROW, _UNCHAINED_ROW = itemgetter(*_CHAINED_ORDER), itemgetter(*_UNCHAINED_ORDER)


class Columns(NamedTuple):
    """A round's contributions by column, every one already checked valid.

    Attributes:
        ids, fates, data_fingerprints, update_digests: one item per contribution.
        prevs: each contribution's ``prev`` when every one is chained, else ``None``
            (unchained or mixed: the per-contribution reference loop then runs).
        details: each contribution's ``detail`` object.
    """

    ids: Sequence[str]
    prevs: Sequence[str] | None
    fates: Sequence[str]
    data_fingerprints: Sequence[str]
    update_digests: Sequence[str]
    details: Sequence[dict[str, Any]]


def round_columns(body: Any) -> Columns | None:
    """The contributions' columns when ``body`` certainly passes
    ``validate_body("round", body)``; None: unsure (the caller then runs the reference
    check, which names any failure)."""
    if type(body) is not dict or type(body.get("contributions")) is not list:
        return None
    try:
        validate_body("round", {**body, "contributions": []})
    except ValueError:
        return None
    return contribution_columns(body["contributions"])


def round_body_ok(body: Any) -> bool:
    """Whether ``body`` certainly passes ``validate_body("round", body)`` (see
    :func:`round_columns`)."""
    return round_columns(body) is not None


def contributions_ok(cs: list[Any]) -> bool:
    """Whether every item of ``cs`` certainly passes the
    :class:`~fedsilo.lineage.records.SiteContribution` validator (column-wise checks)."""
    return contribution_columns(cs) is not None


def contribution_columns(cs: list[Any]) -> Columns | None:
    """The columns of ``cs`` when every item certainly passes the
    :class:`~fedsilo.lineage.records.SiteContribution` validator; None: unsure."""
    if not cs:
        return Columns([], [], [], [], [], [])
    try:
        if set(map(type, cs)) != {dict}:
            return None
        # every item has exactly the fields of one form: all its names are there
        # (itemgetter raises KeyError otherwise) and no more (len)
        lengths = set(map(len, cs))
        if lengths == {len(_CHAINED_ORDER)}:
            df, detail, fate, count, prev, score, sig, site, ud = zip(
                *map(_CHAINED_ROW, cs), strict=True)
            prevs: tuple[Any, ...] | None = prev
        elif lengths == {len(_UNCHAINED_ORDER)}:  # the older, unchained form
            df, detail, fate, count, score, sig, site, ud = zip(
                *map(_UNCHAINED_ROW, cs), strict=True)
            prev, prevs = (), None
        else:  # mixed forms (or not a contribution): the reference decides
            return None
        n = len(cs)
        if "" in site or len("".join(site)) < n:  # join: every one a str
            return None
        if not _digests([*df, *ud, *prev]):
            return None
        if set(map(len, sig)) != {128} or not _hex("".join(sig)):
            return None
        if set(map(type, count)) != {int} or min(count) < 0:
            return None
        if not set(fate) <= _FATES or score.count(None) != n:
            return None
        if set(map(type, detail)) != {dict}:
            return None
        return Columns(site, prevs, fate, df, ud, detail)
    except (TypeError, KeyError):  # unhashable or missing values: not sure
        return None


def _digests(column: list[Any]) -> bool:
    """Every item a ``'sha256:<64 lowercase hex>'`` string: each 71 characters long, the
    prefix at each item's start (strided slices of the joined column), and every other
    character a lower-case hex digit (deleting the hex digits leaves only the prefixes'
    other characters, ``"sh:"`` per item)."""
    if not column:
        return True
    n = len(column)
    if set(map(len, column)) != {71}:
        return False
    joined = "".join(column)  # TypeError (caught by the caller) unless every one is a str
    if any(joined[k::71] != ch * n for k, ch in enumerate(_PREFIX)):
        return False
    try:
        return joined.encode("ascii").translate(None, _HEX_DIGITS) == _PREFIX_REST * n
    except UnicodeEncodeError:
        return False


def _hex(text: str) -> bool:
    """Whether ``text`` is only lower-case hex digits (bytes.translate: a C loop)."""
    try:
        return not text.encode("ascii").translate(None, _HEX_DIGITS)
    except UnicodeEncodeError:
        return False


def round_residual(env: dict[str, Any], columns: Columns) -> Any:
    """:func:`float_residual` of a round envelope whose body passed :func:`round_columns`:
    its contributions and site-id lists are then known to hold only strings, ints and
    null (unless a contribution has a ``detail``), so only the rest of the body is kept."""
    if any(columns.details):
        return float_residual(env)
    body = env["body"]
    return {**env, "body": {k: v for k, v in body.items() if k not in _FLOATLESS}}


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

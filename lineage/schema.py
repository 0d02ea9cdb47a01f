"""Record validation derived from the record dataclasses (the one lineage schema).

A record body's schema is its dataclass (:mod:`fedsilo.lineage.records`): the field names,
their type hints and which may be absent. This module reads them once per class
(``dataclasses.fields`` + ``typing.get_type_hints``) and builds a validator for the dict
form, so no parallel list of fields is kept by hand. What a type hint cannot say (a digest,
a non-empty string, a count >= 0) is declared next to the field with :func:`checked`:

    update_digest: str = checked(DIGEST)

Type hints understood: ``str``, ``int``, ``float`` (any finite number), ``dict[str, Any]``
(a JSON object), ``dict[str, str]``, ``dict[str, float]``, ``list[str]``, a ``Literal`` or a
``StrEnum`` (one of its values), a nested record dataclass or a ``list`` of them, and any of
these ``| None`` (then ``null`` is allowed too).

Type checks are exact (``type(v) is int``): ``True`` is not a count and a ``str`` subclass
is not a stored string, as JSON parsing never produces either.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields, is_dataclass
from enum import Enum
from functools import cache
from typing import Any, Literal

Check = Callable[[Any], bool]
Validate = Callable[[Any, str], None]

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_SIG_RE = re.compile(r"[0-9a-f]{128}")

# metadata keys of :func:`checked`
_RULE, _EXPECTED, _ABSENT_OK, _OMIT_EMPTY = "rule", "expected", "absent_ok", "omit_empty"


def is_str(v: Any) -> bool:
    """A non-empty string."""
    return type(v) is str and v != ""


def is_count(v: Any) -> bool:
    """An int >= 0 (not a bool)."""
    return type(v) is int and v >= 0


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (type(v) is int or type(v) is float) and math.isfinite(v)


def is_digest(v: Any) -> bool:
    """``'sha256:<64 lowercase hex>'``."""
    return type(v) is str and _DIGEST_RE.fullmatch(v) is not None


def is_hex64(v: Any) -> bool:
    """64 lowercase hex (a raw Ed25519 public key)."""
    return type(v) is str and _HEX64_RE.fullmatch(v) is not None


def is_sig(v: Any) -> bool:
    """128 lowercase hex (an Ed25519 signature)."""
    return type(v) is str and _SIG_RE.fullmatch(v) is not None


def is_obj(v: Any) -> bool:
    """A JSON object."""
    return type(v) is dict


@dataclass(frozen=True)
class Rule:
    """What a field's value must be beyond its type hint.

    Attributes:
        check: predicate on the whole value (it checks the type too, so it can stand alone).
        expected: what the value should be, for error messages (``"an int >= 0"``).
    """

    check: Check
    expected: str


D = "'sha256:<64 lowercase hex>'"
NON_EMPTY = Rule(is_str, "a non-empty string")
COUNT = Rule(is_count, "an int >= 0")
DIGEST = Rule(is_digest, D)
HEX64 = Rule(is_hex64, "64 lowercase hex (raw Ed25519 public key)")
SIGNATURE = Rule(is_sig, "128 lowercase hex (Ed25519 signature)")


def checked(
    rule: Rule | None = None,
    *,
    expected: str | None = None,
    absent_ok: bool = False,
    omit_empty: bool = False,
    **field_kwargs: Any,
) -> Any:
    """A dataclass ``field`` carrying the field's schema beyond its type hint.

    Args:
        rule: the constraint on the value (for an optional field: on a non-null value).
        expected: the words for error messages, when better than the rule's or the type's.
        absent_ok: the stored dict may leave the field out (chains written before it
            existed); it then reads as its default.
        omit_empty: ``to_dict`` leaves the field out when it is ``None`` or empty, so
            records without it keep the digests they had before it existed (implies
            ``absent_ok``).
        field_kwargs: passed on to :func:`dataclasses.field` (``default``, ...).
    """
    metadata = {_RULE: rule, _EXPECTED: expected, _ABSENT_OK: absent_ok or omit_empty,
                _OMIT_EMPTY: omit_empty}
    return field(metadata=metadata, **field_kwargs)


def _one_of(values: tuple[str, ...]) -> Rule:
    allowed = frozenset(values)
    words = ", ".join(f"'{v}'" for v in values[:-1])
    words = f"{words} or '{values[-1]}'" if words else f"'{values[-1]}'"
    return Rule(lambda v: type(v) is str and v in allowed, words)


def _list_of(check: Check, expected: str) -> Rule:
    return Rule(lambda v: type(v) is list and all(check(x) for x in v), expected)


def _map_of(check: Check, expected: str) -> Rule:
    return Rule(lambda v: type(v) is dict and all(check(x) for x in v.values()), expected)


_STR = frozenset({str})

# the rule each plain type hint stands for
_TYPE_RULES: dict[Any, Rule] = {
    str: Rule(lambda v: type(v) is str, "a string"),
    int: Rule(lambda v: type(v) is int, "an int"),
    float: Rule(is_number, "a finite number"),
    dict[str, Any]: Rule(is_obj, "a JSON object"),
    # set(map(type, ...)): the same check as all(type(x) is str ...) in one C-level pass
    dict[str, str]: Rule(lambda v: type(v) is dict and set(map(type, v.values())) <= _STR,
                         "an object of strings"),
    dict[str, float]: _map_of(is_number, "an object of finite numbers"),
    list[str]: Rule(lambda v: type(v) is list and set(map(type, v)) <= _STR, "a list of strings"),
}


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
        raise TypeError(f"unsupported union in a record schema: {hint!r}")
    return hint, False


def _type_rule(hint: Any) -> Rule:
    if hint in _TYPE_RULES:
        return _TYPE_RULES[hint]
    if typing.get_origin(hint) is Literal:
        return _one_of(typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _one_of(tuple(m.value for m in hint))
    raise TypeError(f"unsupported type in a record schema: {hint!r}")


def _nullable(rule: Rule, expected: str) -> Rule:
    check = rule.check
    return Rule(lambda v: v is None or check(v), expected)


def _simple_rule(f: Field[Any], hint: Any) -> Rule:
    """The one rule of a non-nested field: its declared rule or its type's, maybe null."""
    base, optional = _split_optional(hint)
    rule = f.metadata.get(_RULE) or _type_rule(base)
    expected = f.metadata.get(_EXPECTED) or (
        f"{rule.expected} or null" if optional else rule.expected
    )
    return _nullable(rule, expected) if optional else Rule(rule.check, expected)


def _nested(hint: Any) -> Validate | None:
    """The validator of a nested record (``X``) or list of them (``list[X]``), else None."""
    if is_dataclass(hint):
        return validator_for(hint)  # type: ignore[arg-type]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if is_dataclass(item):
            check_item = validator_for(item)  # type: ignore[arg-type]

            def check_list(v: Any, where: str) -> None:
                if type(v) is not list:
                    raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
                for i, x in enumerate(v):
                    check_item(x, f"{where}[{i}]")

            return check_list
    return None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def validator_for(cls: type) -> Validate:
    """The validator of ``cls``'s dict form: ``validate(obj, where)`` raises ``ValueError``
    naming the first field that is missing, unknown or of the wrong form."""
    hints = _hints(cls)
    every = frozenset(f.name for f in fields(cls))
    required = frozenset(f.name for f in fields(cls) if not f.metadata.get(_ABSENT_OK))
    simple: list[tuple[str, Check, str]] = []
    nested: list[tuple[str, Validate]] = []
    for f in fields(cls):
        inner = _nested(hints[f.name])
        if inner is not None:
            nested.append((f.name, inner))
        else:
            rule = _simple_rule(f, hints[f.name])
            simple.append((f.name, rule.check, rule.expected))

    def validate(obj: Any, where: str) -> None:
        if type(obj) is not dict:
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        keys = obj.keys()
        if keys != every:
            if not required <= keys <= every:
                missing, unknown = sorted(required - keys), sorted(keys - every)
                raise ValueError(f"{where}: missing fields {missing}, unknown fields {unknown}")
            _check_present(obj, where, simple, nested)
            return
        # the common case (every field present) in one tight loop: one call per field
        for name, check, expected in simple:
            if not check(obj[name]):
                raise ValueError(f"{where}.{name}: expected {expected}, got {obj[name]!r:.80}")
        for name, check_nested in nested:
            check_nested(obj[name], f"{where}.{name}")

    return validate


def _check_present(
    obj: dict[str, Any], where: str, simple: list[tuple[str, Check, str]],
    nested: list[tuple[str, Validate]],
) -> None:
    """:func:`validator_for`'s checks of the fields present (some ``absent_ok`` are not)."""
    for name, check, expected in simple:
        if name in obj and not check(obj[name]):
            raise ValueError(f"{where}.{name}: expected {expected}, got {obj[name]!r:.80}")
    for name, check_nested in nested:
        if name in obj:
            check_nested(obj[name], f"{where}.{name}")


def _plain(value: Any) -> Any:
    """A field value as plain JSON data: records as dicts, enum members as their values,
    containers copied (the dict form must not share mutable state with the record)."""
    if is_dataclass(value) and not isinstance(value, type):
        # a record writes its own dict form; any other dataclass (inside a free-form
        # dict) becomes a plain dict, as dataclasses.asdict made it before
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if to_dict is not None else asdict(value)
    if isinstance(value, Enum):
        return value.value
    if type(value) is list:
        return [_plain(x) for x in value]
    if type(value) is dict:
        return {k: _plain(x) for k, x in value.items()}
    if type(value) is tuple:
        return tuple(_plain(x) for x in value)
    return value


def body_of(record: Any) -> dict[str, Any]:
    """The dict form of a record dataclass (fields in declaration order; ``omit_empty``
    fields left out when ``None`` or empty)."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.metadata.get(_OMIT_EMPTY) and (value is None or value == [] or value == {}):
            continue
        out[f.name] = _plain(value)
    return out


def build(cls: type, data: dict[str, Any]) -> Any:
    """Build ``cls`` from a validated dict: nested records built, enum values converted,
    absent fields left to their defaults."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint, _ = _split_optional(hints[f.name])
        kwargs[f.name] = _typed(hint, data[f.name])
    return cls(**kwargs)


def _typed(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if is_dataclass(hint):
        return build(hint, value)  # type: ignore[arg-type]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if is_dataclass(item):
            return [build(item, x) for x in value]  # type: ignore[arg-type]
    return value


__all__ = [
    "COUNT",
    "D",
    "DIGEST",
    "HEX64",
    "NON_EMPTY",
    "SIGNATURE",
    "Rule",
    "body_of",
    "build",
    "checked",
    "is_count",
    "is_digest",
    "is_hex64",
    "is_number",
    "is_obj",
    "is_sig",
    "is_str",
    "is_task",
    "validator_for",
    "TASK_RULE",
]


def is_task(v: Any) -> bool:
    """A genesis ``task``: the task identity, optionally its summed statistics' record."""
    if type(v) is not dict or not set(v) <= {"name", "version", "layout_digest",
                                             "schema_digest", "statistics", "data_profiles"}:
        return False
    if not (is_str(v.get("name")) and is_str(v.get("version"))
            and is_digest(v.get("layout_digest")) and is_digest(v.get("schema_digest"))):
        return False
    if "data_profiles" in v and not is_profiles(v["data_profiles"]):
        return False
    stats = v.get("statistics")
    if stats is None:
        return "statistics" not in v
    # "summed": "secagg+" when the sum was taken under SecAgg+ (fedsilo.server.task_round)
    return (type(stats) is dict and set(stats) <= {"digest", "sites", "values", "summed"}
            and is_digest(stats.get("digest")) and is_count(stats.get("sites"))
            and ("values" not in stats or is_obj(stats["values"]))
            and stats.get("summed", "secagg+") == "secagg+")


def is_profiles(v: Any) -> bool:
    """A genesis ``task.data_profiles`` (`fedsilo.server.data_profiles`): how the profiles
    were summed, the federation's profile, optionally each site's (never with ``dp``: the
    release of their noisy sum under client-level DP), the baseline, notes."""
    if type(v) is not dict or not set(v) <= {"summed", "federation", "sites", "baseline",
                                             "dp", "record_dp", "notes"} \
            or {"dp", "sites"} <= set(v):
        return False
    sites = v.get("sites", {})
    return (v.get("summed") in ("clear", "secagg+") and is_obj(v.get("federation"))
            and type(sites) is dict and all(is_obj(p) for p in sites.values())
            and is_obj(v.get("baseline", {})) and is_obj(v.get("dp", {}))
            and is_obj(v.get("record_dp", {}))
            and type(v.get("notes", [])) is list and all(is_str(n) for n in v.get("notes", [])))


TASK_RULE = Rule(is_task, "null or a JSON object with name and version (non-empty strings), "
             f"layout_digest and schema_digest ({D}) and optionally statistics (digest, "
             "sites, values, summed: \"secagg+\") and data_profiles (summed, federation, "
             "sites or dp, baseline, notes)")

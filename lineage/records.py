"""Lineage record bodies: genesis, site join, round, resume and closing.

Each record is a dataclass with ``to_dict()`` / ``from_dict()``. The dict form is what is
stored (inside the envelope, see :mod:`fedsilo.lineage.envelope`) and what
:func:`validate_body` checks field by field; ``from_dict`` validates before building.
Optional ``privacy``, ``secagg`` and ``extra`` dicts on round records are the space other
features fill in (DP parameters and epsilon, SecAgg parameters and recovered dropouts).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_SIG_RE = re.compile(r"[0-9a-f]{128}")

Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return type(v) is str and v != ""


def _is_any_str(v: Any) -> bool:
    return type(v) is str


def _is_opt_str(v: Any) -> bool:
    return v is None or type(v) is str


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and math.isfinite(v)


def _is_opt_number(v: Any) -> bool:
    return v is None or _is_number(v)


def _is_digest(v: Any) -> bool:
    return type(v) is str and _DIGEST_RE.fullmatch(v) is not None


def _is_opt_digest(v: Any) -> bool:
    return v is None or _is_digest(v)


def _is_hex64(v: Any) -> bool:
    return type(v) is str and _HEX64_RE.fullmatch(v) is not None


def _is_sig(v: Any) -> bool:
    return type(v) is str and _SIG_RE.fullmatch(v) is not None


def _is_obj(v: Any) -> bool:
    return type(v) is dict


def _is_opt_obj(v: Any) -> bool:
    return v is None or type(v) is dict


def _is_str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


def _is_str_map(v: Any) -> bool:
    return type(v) is dict and all(type(x) is str for x in v.values())


def _is_number_map(v: Any) -> bool:
    return type(v) is dict and all(_is_number(x) for x in v.values())


def _one_of(*values: str) -> Check:
    allowed = frozenset(values)
    return lambda v: type(v) is str and v in allowed


def _list_of(validate: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    def check(v: Any, where: str) -> None:
        if type(v) is not list:
            raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
        for i, item in enumerate(v):
            validate(item, f"{where}[{i}]")

    return check


Spec = dict[str, tuple[Check, str] | Callable[[Any, str], None]]


def _validator(spec: Spec) -> Callable[[Any, str], None]:
    """Build a validator for a JSON object with exactly the keys of ``spec``."""
    keys = frozenset(spec)
    simple = [(k, v[0], v[1]) for k, v in spec.items() if isinstance(v, tuple)]
    nested = [(k, v) for k, v in spec.items() if not isinstance(v, tuple)]

    def validate(obj: Any, where: str) -> None:
        if type(obj) is not dict:
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if obj.keys() != keys:
            missing = sorted(keys - obj.keys())
            unknown = sorted(obj.keys() - keys)
            raise ValueError(f"{where}: missing fields {missing}, unknown fields {unknown}")
        for name, check, expected in simple:
            if not check(obj[name]):
                raise ValueError(f"{where}.{name}: expected {expected}, got {obj[name]!r:.80}")
        for name, check_nested in nested:
            check_nested(obj[name], f"{where}.{name}")

    return validate


_D = "'sha256:<64 lowercase hex>'"
# why a run ended (fedsilo.server.outcome explains each); "rounds_done" is the legacy name of
# "completed", kept so that chains written before the distinction still verify
CLOSING_REASONS = ("completed", "no_progress", "budget_exhausted", "error", "interrupted",
                   "rounds_done")

_validate_site_fields = _validator(
    {
        "site_id": (_is_str, "a non-empty string"),
        "public_key": (_is_hex64, "64 lowercase hex (raw Ed25519 public key)"),
        "data_fingerprint": (_is_digest, _D),
        "policy": (_is_obj, "a JSON object"),
        "num_examples": (lambda v: v is None or (_is_count(v) and v >= 1),
                         "an int >= 1 (the example count the site declared) or null"),
        "declaration": (lambda v: v is None or _is_sig(v),
                        "128 lowercase hex (the site's signature over its declaration) or null"),
        "app_digest": (lambda v: v is None or _is_digest(v),
                       "'sha256:<64 hex>' (the app bundle the site ran) or null"),
    }
)


def _validate_site(obj: Any, where: str) -> None:
    """``num_examples`` is optional: chains written before sites declared their example
    count at the handshake stay valid."""
    if type(obj) is dict:
        obj = {"num_examples": None, "declaration": None, "app_digest": None, **obj}
    _validate_site_fields(obj, where)

_validate_contribution_generic = _validator(
    {
        "site_id": (_is_str, "a non-empty string"),
        "update_digest": (_is_digest, _D),
        "num_examples": (
            lambda v: v is None or _is_count(v),
            "an int >= 0, or null (secure sum: the count stays secret)",
        ),
        "data_fingerprint": (_is_digest, _D),
        "signature": (_is_sig, "128 lowercase hex (Ed25519 signature)"),
        "fate": (_one_of("accepted", "rejected"), "'accepted' or 'rejected'"),
        "score": (_is_opt_number, "a finite number or null"),
        "detail": (_is_obj, "a JSON object"),
    }
)

_CONTRIBUTION_KEYS = frozenset(
    {
        "site_id",
        "update_digest",
        "num_examples",
        "data_fingerprint",
        "signature",
        "fate",
        "score",
        "detail",
    }
)
_CONTRIBUTION_HEX_RE = re.compile(r"sha256:[0-9a-f]{64}sha256:[0-9a-f]{64}[0-9a-f]{128}")
_FATES = frozenset({"accepted", "rejected"})


def _validate_contribution(c: Any, where: str) -> None:
    """Fast path for the most numerous object (one per site per round); falls back to the
    generic validator to produce the precise error message."""
    if type(c) is dict and c.keys() == _CONTRIBUTION_KEYS:
        ud, fp, sig, fate = c["update_digest"], c["data_fingerprint"], c["signature"], c["fate"]
        n, score = c["num_examples"], c["score"]
        if (
            type(ud) is str
            and type(fp) is str
            and type(sig) is str
            and len(ud) == 71
            and len(fp) == 71
            and len(sig) == 128
            and _CONTRIBUTION_HEX_RE.fullmatch(ud + fp + sig) is not None
            and type(c["site_id"]) is str
            and c["site_id"] != ""
            and (n is None or (type(n) is int and n >= 0))
            and type(fate) is str
            and fate in _FATES
            and (score is None or _is_number(score))
            and type(c["detail"]) is dict
        ):
            return
    _validate_contribution_generic(c, where)
    raise AssertionError(f"{where}: fast and generic contribution checks disagree")


_validate_evaluation = _validator(
    {
        "site_id": (_is_str, "a non-empty string"),
        "model_digest": (_is_digest, _D),
        "loss": (_is_number, "a finite number"),
        "num_examples": (_is_count, "an int >= 0"),
        "metrics": (_is_number_map, "an object metric name -> finite number"),
        "signature": (_is_sig, "128 lowercase hex (the site's signature over its evaluation)"),
    }
)
validate_evaluation = _validate_evaluation
"""Check one per-site evaluation entry (dict form): ``validate_evaluation(entry, where)``."""


_validate_genesis_fields = _validator(
    {
        "run_id": (_is_str, "a non-empty string"),
        "created_at": (_is_str, "a non-empty string (ISO 8601 time)"),
        "config": (_is_obj, "a JSON object"),
        "code_version": (_is_obj, "a JSON object"),
        "initial_model_digest": (_is_digest, _D),
        "server_public_key": (_is_hex64, "64 lowercase hex (raw Ed25519 public key)"),
        "sites": _list_of(_validate_site),
        "notes": (_is_str_list, "a list of strings"),
        "task": (lambda v: v is None or _is_task(v), "null or a JSON object with name and "
                 "version (non-empty strings), layout_digest and schema_digest "
                 f"({_D}) and optionally statistics (digest, sites, values)"),
    }
)


def _is_task(v: Any) -> bool:
    """A genesis ``task``: the task identity, optionally its summed statistics' record."""
    if type(v) is not dict or not set(v) <= {"name", "version", "layout_digest",
                                             "schema_digest", "statistics"}:
        return False
    if not (_is_str(v.get("name")) and _is_str(v.get("version"))
            and _is_digest(v.get("layout_digest")) and _is_digest(v.get("schema_digest"))):
        return False
    stats = v.get("statistics")
    if stats is None:
        return "statistics" not in v
    return (type(stats) is dict and set(stats) <= {"digest", "sites", "values"}
            and _is_digest(stats.get("digest")) and _is_count(stats.get("sites"))
            and ("values" not in stats or _is_obj(stats["values"])))


def _validate_genesis(obj: Any, where: str) -> None:
    """``notes`` and ``task`` are optional: chains written before they existed stay valid."""
    if type(obj) is dict and ("notes" not in obj or "task" not in obj):
        obj = {"notes": [], "task": None, **obj}
    _validate_genesis_fields(obj, where)


# ``evaluations`` is optional: chains written before sites signed their evaluations (and
# rounds without any) stay valid; `RoundRecord.to_dict` leaves it out when empty.
_validate_round_fields = _validator(
    {
        "round": (_is_count, "an int >= 0"),
        "sampled": (_is_str_list, "a list of site ids"),
        "replied": (_is_str_list, "a list of site ids"),
        "accepted": (_is_str_list, "a list of site ids"),
        "rejected": (_is_str_map, "an object site id -> reason"),
        "dropped": (_is_str_list, "a list of site ids"),
        "contributions": _list_of(_validate_contribution),
        "model_in": (_is_digest, _D),
        "model_out": (_is_digest, _D),
        "strategy": (_is_obj, "a JSON object"),
        "metrics": (_is_obj, "a JSON object"),
        "timings": (_is_number_map, "an object name -> seconds"),
        "status": (_one_of("completed", "skipped"), "'completed' or 'skipped'"),
        "reason": (_is_opt_str, "a string or null"),
        "privacy": (_is_opt_obj, "a JSON object or null"),
        "secagg": (_is_opt_obj, "a JSON object or null"),
        "extra": (_is_obj, "a JSON object"),
        "evaluations": _list_of(_validate_evaluation),
    }
)


def _validate_round(obj: Any, where: str) -> None:
    if type(obj) is dict and "evaluations" not in obj:
        obj = {**obj, "evaluations": []}
    _validate_round_fields(obj, where)


_BODY_VALIDATORS: dict[str, Callable[[Any, str], None]] = {
    "genesis": _validate_genesis,
    "site_join": _validator({"site": _validate_site, "round": (_is_count, "an int >= 0")}),
    "round": _validate_round,
    "resume": _validator(
        {
            "resumed_at": (_is_str, "a non-empty string (ISO 8601 time)"),
            "from_round": (_is_count, "an int >= 0"),
            "reason": (_is_any_str, "a string"),
        }
    ),
    "closing": _validator(
        {
            "reason": (
                _one_of(*CLOSING_REASONS),
                "'completed', 'no_progress', 'budget_exhausted', 'error', 'interrupted' "
                "or (legacy) 'rounds_done'",
            ),
            "detail": (_is_any_str, "a string"),
            "rounds_completed": (_is_count, "an int >= 0"),
            "final_model_digest": (_is_opt_digest, f"{_D} or null"),
            "epsilon_spent": (_is_opt_number, "a finite number or null"),
        }
    ),
}

RECORD_TYPES: tuple[str, ...] = tuple(_BODY_VALIDATORS)
"""Record type names, as stored in the envelope's ``type`` field."""


def validate_body(record_type: str, body: Any, where: str = "body") -> None:
    """Check a record body (dict form) against its schema.

    Args:
        record_type: one of :data:`RECORD_TYPES`.
        body: the dict to check.
        where: prefix for error messages (e.g. ``"record 3 (round) body"``).

    Raises:
        ValueError: naming the first field that is missing, unknown or of the wrong form.
    """
    validator = _BODY_VALIDATORS.get(record_type)
    if validator is None:
        raise ValueError(f"unknown record type {record_type!r}; expected one of {RECORD_TYPES}")
    validator(body, where)


class _Record:
    """Mixin: dict conversion with validation."""

    TYPE: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The record body as a plain JSON-ready dict (a deep copy)."""
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class SiteIdentity:
    """A site as the federation knows it.

    Attributes:
        site_id: the site's stable id (from the handshake).
        public_key: the site's Ed25519 public key, 64 hex (:func:`public_key_hex`).
        data_fingerprint: :func:`data_fingerprint` of the site's data at join time.
        policy: the site's declared policy summary (any JSON object).
        num_examples: the example count the site declared (and signed) at the handshake:
            the bound of every count it may report in a round; ``None`` in chains written
            before sites declared it.
        declaration: the site's Ed25519 signature over its declaration
            (:func:`fedsilo.lineage.signing.declaration_message`: run id, site id, data
            fingerprint, ``num_examples``), 128 lower-case hex; ``None`` for a site without a
            key or in older chains. ``lineage verify`` checks it like a contribution's.
        app_digest: content digest (``sha256:<hex>``) of the app bundle the site checked
            against its code policy and ran (`fedsilo.client.app_code`); ``None`` for a
            site that did not report one, or in older chains.
    """

    site_id: str
    public_key: str
    data_fingerprint: str
    policy: dict[str, Any] = field(default_factory=dict)
    num_examples: int | None = None
    declaration: str | None = None
    app_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (``declaration`` and ``app_digest`` only when set, so older chains
        keep their digests)."""
        out = asdict(self)
        for name in ("declaration", "app_digest"):
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteIdentity:
        """Validate and build from the dict form (raises ``ValueError``)."""
        _validate_site(dict(data), "site")
        return cls(**data)


@dataclass
class SiteContribution:
    """One site's reply in a round, as the server recorded it.

    Attributes:
        site_id: who sent it.
        update_digest: :func:`update_digest` of the flat update received (under SecAgg+,
            of the masked uint32 vector received).
        num_examples: the example count the site reported (aggregation weight); ``None``
            under SecAgg+, where it is inside the secure sum (``detail["secagg"]``).
        data_fingerprint: fingerprint the site declared for this round.
        signature: the site's Ed25519 signature (hex) over :func:`contribution_message`.
        fate: ``"accepted"`` (went into the aggregate) or ``"rejected"`` (screened out).
        score: optional robustness/screening score.
        detail: free-form JSON detail (e.g. the screening reason).
    """

    site_id: str
    update_digest: str
    num_examples: int | None
    data_fingerprint: str
    signature: str
    fate: Literal["accepted", "rejected"] = "accepted"
    score: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteContribution:
        """Validate and build from the dict form (raises ``ValueError``)."""
        _validate_contribution(dict(data), "contribution")
        return cls(**data)


@dataclass
class SiteEvaluation:
    """One site's score of a round's global model on its own held-out split.

    Attributes:
        site_id: who evaluated.
        model_digest: :func:`arrays_digest` of the model the site evaluated, as the site
            computed it from the weights it received (the round's ``model_out``).
        loss: the site's loss on its held-out split.
        num_examples: how many held-out examples it evaluated.
        metrics: the task's other metrics (e.g. ``{"accuracy": 0.93}``).
        signature: the site's Ed25519 signature (hex) over
            :func:`fedsilo.lineage.signing.evaluation_message`.
    """

    site_id: str
    model_digest: str
    loss: float
    num_examples: int
    metrics: dict[str, float]
    signature: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)


@dataclass
class GenesisRecord(_Record):
    """First record of every chain.

    Attributes:
        run_id: the run's id.
        created_at: ISO 8601 UTC time the run started.
        config: the resolved, validated run config.
        code_version: e.g. ``{"fedsilo": "0.1.0", "git_commit": "...", "flwr": "1.42.0"}``.
        initial_model_digest: :func:`arrays_digest` of the initial global model.
        server_public_key: the server's Ed25519 public key (64 hex); signs every record.
        sites: the sites known at the start (from the handshake).
        notes: what the run knowingly does outside a guarantee (e.g. more simulated
            attackers than the aggregator tolerates); stored only when not empty.
        task: the task identity every site presented (name, version, layout_digest,
            schema_digest) and, when the task has federated statistics, their sum's
            record (``statistics``: digest, sites, values when small); stored when set.
    """

    TYPE: ClassVar[str] = "genesis"
    run_id: str
    created_at: str
    config: dict[str, Any]
    code_version: dict[str, Any]
    initial_model_digest: str
    server_public_key: str
    sites: list[SiteIdentity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    task: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The body; without ``notes`` when there are none (as before notes existed), and
        without ``task`` when the run has none (as before tasks existed)."""
        body = asdict(self)
        body["sites"] = [s.to_dict() for s in self.sites]
        if not body["notes"]:
            del body["notes"]
        if body["task"] is None:
            del body["task"]
        return body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenesisRecord:
        """Validate and build from the dict form (raises ``ValueError``)."""
        validate_body(cls.TYPE, dict(data))
        return cls(**{**data, "sites": [SiteIdentity(**s) for s in data["sites"]]})


@dataclass
class SiteJoinRecord(_Record):
    """A site that joins after genesis, from round ``round`` on.

    Attributes:
        site: the joining site's identity (its key then verifies its contributions).
        round: first round the site may contribute to.
    """

    TYPE: ClassVar[str] = "site_join"
    site: SiteIdentity
    round: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteJoinRecord:
        """Validate and build from the dict form (raises ``ValueError``)."""
        validate_body(cls.TYPE, dict(data))
        return cls(site=SiteIdentity(**data["site"]), round=data["round"])


@dataclass
class RoundRecord(_Record):
    """One federated round.

    Attributes:
        round: round number.
        sampled: site ids the server sampled.
        replied: site ids that replied in time.
        accepted: site ids whose update went into the aggregate; must equal the site ids
            of the contributions whose ``fate`` is ``"accepted"``.
        rejected: site id -> reason, for replies screened out or refusals.
        dropped: site ids that did not reply.
        contributions: one entry per update received.
        model_in: digest of the global model sent out this round.
        model_out: digest of the global model after aggregation (== ``model_in`` when
            ``status`` is ``"skipped"``).
        strategy: strategy name and parameters, e.g. ``{"name": "fedavg", ...}``.
        metrics: aggregated metrics.
        timings: phase -> seconds.
        status: ``"completed"`` or ``"skipped"`` (e.g. too few replies).
        reason: why the round was skipped, else ``None``.
        privacy: DP parameters and epsilon (round and cumulative), filled by the DP feature.
        secagg: SecAgg parameters and recovered dropouts, filled by the SecAgg feature.
        extra: anything else.
        evaluations: the sites' signed scores of ``model_out`` on their own held-out
            splits (every ``eval_every`` rounds); stored only when not empty.
    """

    TYPE: ClassVar[str] = "round"
    round: int
    sampled: list[str]
    replied: list[str]
    accepted: list[str]
    rejected: dict[str, str]
    dropped: list[str]
    contributions: list[SiteContribution]
    model_in: str
    model_out: str
    strategy: dict[str, Any]
    metrics: dict[str, Any]
    timings: dict[str, float]
    status: Literal["completed", "skipped"] = "completed"
    reason: str | None = None
    privacy: dict[str, Any] | None = None
    secagg: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    evaluations: list[SiteEvaluation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The body; without ``evaluations`` when there are none (as before they existed)."""
        body = asdict(self)
        if not body["evaluations"]:
            del body["evaluations"]
        return body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Validate and build from the dict form (raises ``ValueError``)."""
        validate_body(cls.TYPE, dict(data))
        contributions = [SiteContribution(**c) for c in data["contributions"]]
        evaluations = [SiteEvaluation(**e) for e in data.get("evaluations", [])]
        return cls(**{**data, "contributions": contributions, "evaluations": evaluations})


@dataclass
class ResumeRecord(_Record):
    """Written when a crashed or interrupted run is resumed.

    Attributes:
        resumed_at: ISO 8601 UTC time of the resume.
        from_round: the round whose resulting model the run resumes from (the checkpoint's
            round; 0 = the initial model); later round records before this one are
            superseded.
        reason: why (e.g. ``"server crash"``).
    """

    TYPE: ClassVar[str] = "resume"
    resumed_at: str
    from_round: int
    reason: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResumeRecord:
        """Validate and build from the dict form (raises ``ValueError``)."""
        validate_body(cls.TYPE, dict(data))
        return cls(**data)


@dataclass
class ClosingRecord(_Record):
    """Last record: why the run ended.

    Attributes:
        reason: ``"completed"`` (the configured minimum of rounds changed the model),
            ``"no_progress"`` (fewer did), ``"budget_exhausted"``, ``"error"`` or
            ``"interrupted"``; ``"rounds_done"``, the name of ``"completed"`` in chains
            written before the distinction, is still read (see `fedsilo.server.outcome`).
        detail: human-readable detail (the error message, or the progress made: "12 of
            30 rounds changed the model; 18 skipped: <most common reason>").
        rounds_completed: number of rounds the run completed (informational; ``verify``
            does not cross-check it).
        final_model_digest: digest of the saved final model (``RUN_DIR/model.npz``), or
            ``None`` when no model was saved.
        epsilon_spent: total DP epsilon spent, when DP was on.
    """

    TYPE: ClassVar[str] = "closing"
    reason: Literal["completed", "no_progress", "budget_exhausted", "error", "interrupted",
                    "rounds_done"]
    detail: str
    rounds_completed: int
    final_model_digest: str | None
    epsilon_spent: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClosingRecord:
        """Validate and build from the dict form (raises ``ValueError``)."""
        validate_body(cls.TYPE, dict(data))
        return cls(**data)


Record = GenesisRecord | SiteJoinRecord | RoundRecord | ResumeRecord | ClosingRecord

RECORD_CLASSES: dict[str, type[Record]] = {
    cls.TYPE: cls
    for cls in (GenesisRecord, SiteJoinRecord, RoundRecord, ResumeRecord, ClosingRecord)
}


def record_from_dict(record_type: str, body: Mapping[str, Any]) -> Record:
    """Build the record dataclass of ``record_type`` from its validated dict body."""
    cls = RECORD_CLASSES.get(record_type)
    if cls is None:
        raise ValueError(f"unknown record type {record_type!r}; expected one of {RECORD_TYPES}")
    return cls.from_dict(body)

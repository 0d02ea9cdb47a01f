"""Lineage record bodies: genesis, site join, round, resume and closing.

These dataclasses are the lineage schema, and the only one: field names, type hints,
defaults and the per-field rules declared with :func:`~fedsilo.lineage.schema.checked` are
what :func:`validate_body` checks (derived by :mod:`fedsilo.lineage.schema`), what
``to_dict`` writes and what ``from_dict`` reads. The dict form is what is stored (inside the
envelope, see :mod:`fedsilo.lineage.envelope`); ``from_dict`` validates before building.
Optional ``privacy``, ``secagg`` and ``extra`` dicts on round records are the space other
features fill in (DP parameters and epsilon, SecAgg parameters and recovered dropouts).

A new field: add it to its dataclass with a type hint and, when older chains lack it,
``checked(..., omit_empty=True)`` (written only when set, so old records keep their digests)
or ``absent_ok=True`` (always written, read as its default when absent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, get_args

from .fates import Fate, SecAggFate
from .schema import (
    COUNT,
    DIGEST,
    HEX64,
    NON_EMPTY,
    SIGNATURE,
    TASK_RULE,
    Rule,
    body_of,
    build,
    checked,
    is_count,
    is_digest,
    is_sig,
    is_str,
    validator_for,
)

# the predicates other modules imported from here before fedsilo.lineage.schema existed
_is_count, _is_digest, _is_sig, _is_str = is_count, is_digest, is_sig, is_str

ClosingReason = Literal["completed", "no_progress", "budget_exhausted", "stopped_by_monitor",
                        "error", "interrupted", "rounds_done"]
# why a run ended (fedsilo.server.outcome explains each); "rounds_done" is the legacy name of
# "completed", kept so that chains written before the distinction still verify
CLOSING_REASONS: tuple[str, ...] = get_args(ClosingReason)

_SITE_IDS = "a list of site ids"
_ISO_TIME = "a non-empty string (ISO 8601 time)"


class _Record:
    """Mixin: the dict form and its validation, both derived from the dataclass."""

    TYPE: ClassVar[str]
    #: where a validation error of ``from_dict`` says it is (``"body.run_id: ..."``)
    WHERE: ClassVar[str] = "body"

    def to_dict(self) -> dict[str, Any]:
        """The record body as a plain JSON-ready dict (a deep copy)."""
        return body_of(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Validate and build from the dict form (raises ``ValueError``)."""
        data = dict(data)
        validator_for(cls)(data, cls.WHERE)
        return build(cls, data)  # type: ignore[no-any-return]


@dataclass
class SiteIdentity(_Record):
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

    WHERE: ClassVar[str] = "site"
    site_id: str = checked(NON_EMPTY)
    public_key: str = checked(HEX64)
    data_fingerprint: str = checked(DIGEST)
    policy: dict[str, Any] = field(default_factory=dict)
    num_examples: int | None = checked(
        Rule(lambda v: is_count(v) and v >= 1, "an int >= 1"), absent_ok=True, default=None,
        expected="an int >= 1 (the example count the site declared) or null")
    declaration: str | None = checked(
        SIGNATURE, omit_empty=True, default=None,
        expected="128 lowercase hex (the site's signature over its declaration) or null")
    app_digest: str | None = checked(
        DIGEST, omit_empty=True, default=None,
        expected="'sha256:<64 hex>' (the app bundle the site ran) or null")


@dataclass
class SiteContribution(_Record):
    """One site's reply in a round, as the server recorded it.

    Attributes:
        site_id: who sent it.
        update_digest: :func:`update_digest` of the flat update received (under SecAgg+,
            of the masked uint32 vector received).
        num_examples: the example count the site reported (aggregation weight); ``None``
            under SecAgg+, where it is inside the secure sum (``detail["secagg"]``).
        data_fingerprint: fingerprint the site declared for this round.
        signature: the site's Ed25519 signature (hex) over :func:`contribution_message`.
        fate: :attr:`Fate.ACCEPTED` (went into the aggregate) or :attr:`Fate.REJECTED`
            (screened out); a plain ``"accepted"``/``"rejected"`` string is accepted too.
        score: optional robustness/screening score.
        detail: free-form JSON detail (e.g. the screening reason; under SecAgg+
            ``detail["secagg"]["fate"]`` is a :class:`SecAggFate`).
        prev: a chained attestation's link: ``attestation_digest`` of the site's previous
            contribution message in this run (``GENESIS_ATTESTATION`` for its first), signed
            in the ``fedsilo.contribution/2`` message. Absent for an unchained contribution
            (older chains, SecAgg+ masked inputs), whose signature every mode checks.
    """

    WHERE: ClassVar[str] = "contribution"
    site_id: str = checked(NON_EMPTY)
    update_digest: str = checked(DIGEST)
    num_examples: int | None = checked(
        COUNT, expected="an int >= 0, or null (secure sum: the count stays secret)")
    data_fingerprint: str = checked(DIGEST)
    signature: str = checked(SIGNATURE)
    fate: Fate = Fate.ACCEPTED
    score: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    prev: str | None = checked(
        DIGEST, omit_empty=True, default=None,
        expected="'sha256:<64 hex>' (the site's previous attestation) or absent")


@dataclass
class SiteEvaluation(_Record):
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

    WHERE: ClassVar[str] = "evaluation"
    site_id: str = checked(NON_EMPTY)
    model_digest: str = checked(DIGEST)
    loss: float = checked()
    num_examples: int = checked(COUNT)
    metrics: dict[str, float] = checked(expected="an object metric name -> finite number")
    signature: str = checked(
        SIGNATURE, expected="128 lowercase hex (the site's signature over its evaluation)")


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
            record (``statistics``: digest, sites, values when small), and the sites' data
            profiles of the drift check (``data_profiles``); stored when set.
    """

    TYPE: ClassVar[str] = "genesis"
    run_id: str = checked(NON_EMPTY)
    created_at: str = checked(NON_EMPTY, expected=_ISO_TIME)
    config: dict[str, Any] = checked()
    code_version: dict[str, Any] = checked()
    initial_model_digest: str = checked(DIGEST)
    server_public_key: str = checked(HEX64)
    sites: list[SiteIdentity] = field(default_factory=list)
    notes: list[str] = checked(omit_empty=True, default_factory=list)
    task: dict[str, Any] | None = checked(TASK_RULE, omit_empty=True, default=None,
                                          expected=TASK_RULE.expected)


@dataclass
class SiteJoinRecord(_Record):
    """A site that joins after genesis, from round ``round`` on.

    Attributes:
        site: the joining site's identity (its key then verifies its contributions).
        round: first round the site may contribute to.
    """

    TYPE: ClassVar[str] = "site_join"
    site: SiteIdentity
    round: int = checked(COUNT)


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
    round: int = checked(COUNT)
    sampled: list[str] = checked(expected=_SITE_IDS)
    replied: list[str] = checked(expected=_SITE_IDS)
    accepted: list[str] = checked(expected=_SITE_IDS)
    rejected: dict[str, str] = checked(expected="an object site id -> reason")
    dropped: list[str] = checked(expected=_SITE_IDS)
    contributions: list[SiteContribution] = checked()
    model_in: str = checked(DIGEST)
    model_out: str = checked(DIGEST)
    strategy: dict[str, Any] = checked()
    metrics: dict[str, Any] = checked()
    timings: dict[str, float] = checked(expected="an object name -> seconds")
    status: Literal["completed", "skipped"] = "completed"
    reason: str | None = None
    privacy: dict[str, Any] | None = None
    secagg: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    evaluations: list[SiteEvaluation] = checked(omit_empty=True, default_factory=list)


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
    resumed_at: str = checked(NON_EMPTY, expected=_ISO_TIME)
    from_round: int = checked(COUNT)
    reason: str = checked()


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
    reason: ClosingReason = checked(
        expected="'completed', 'no_progress', 'budget_exhausted', 'error', 'interrupted' "
        "or (legacy) 'rounds_done'")
    detail: str = checked()
    rounds_completed: int = checked(COUNT)
    final_model_digest: str | None = checked(DIGEST)
    epsilon_spent: float | None = None


Record = GenesisRecord | SiteJoinRecord | RoundRecord | ResumeRecord | ClosingRecord

RECORD_CLASSES: dict[str, type[Record]] = {
    cls.TYPE: cls
    for cls in (GenesisRecord, SiteJoinRecord, RoundRecord, ResumeRecord, ClosingRecord)
}

RECORD_TYPES: tuple[str, ...] = tuple(RECORD_CLASSES)
"""Record type names, as stored in the envelope's ``type`` field."""

_BODY_VALIDATORS: dict[str, Callable[[Any, str], None]] = {
    name: validator_for(cls) for name, cls in RECORD_CLASSES.items()
}

validate_evaluation = validator_for(SiteEvaluation)
"""Check one per-site evaluation entry (dict form): ``validate_evaluation(entry, where)``."""


def validate_body(record_type: str, body: Any, where: str = "body") -> None:
    """Check a record body (dict form) against its schema (its dataclass).

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


def record_from_dict(record_type: str, body: Mapping[str, Any]) -> Record:
    """Build the record dataclass of ``record_type`` from its validated dict body."""
    cls = RECORD_CLASSES.get(record_type)
    if cls is None:
        raise ValueError(f"unknown record type {record_type!r}; expected one of {RECORD_TYPES}")
    return cls.from_dict(body)  # type: ignore[no-any-return]


__all__ = [
    "CLOSING_REASONS",
    "RECORD_CLASSES",
    "RECORD_TYPES",
    "ClosingRecord",
    "Fate",
    "GenesisRecord",
    "Record",
    "ResumeRecord",
    "RoundRecord",
    "SecAggFate",
    "SiteContribution",
    "SiteEvaluation",
    "SiteIdentity",
    "SiteJoinRecord",
    "record_from_dict",
    "validate_body",
    "validate_evaluation",
]

"""The wire contract of a training round: what the server sends, what a site answers.

Three typed messages, each with ``to_record()`` / ``from_record()`` that write and read
exactly the Flower records fedsilo has always sent (same record names, same keys in the
same order, same values), so adopting them changes no byte on the wire and no lineage
digest:

* `RoundConfig`: the ``config`` ConfigRecord of a ``train`` (and ``evaluate``) message:
  the round's identity, the training hyper-parameters, the model layout(s), the server's
  key fingerprint, whether the round is securely aggregated, and the DP parameters
  (``dp_*``) and record-level DP parameters (``record_dp_*``), held here without their
  prefix;
* `TrainReply`: a site's update: ``update`` ArrayRecord (the flat float32 delta),
  ``metrics`` MetricRecord (``num-examples`` first, then the Trainer's metrics) and
  ``site`` ConfigRecord (site id, update digest, data fingerprint, signature, layout);
* `Refusal`: a site that sends no update says why: ``refusal`` ConfigRecord
  (``site_id``, ``reason``) in a plain round, or, inside a SecAgg+ stage (whose replies
  the server decodes as protocol messages), a Flower ``Error`` with `REFUSAL_ERROR_CODE`
  (`Refusal.to_error` / `Refusal.from_error`).

Adopting them on the server: ``RoundConfig(run_id=..., server_round=..., ...,
dp=dp.round_config(r), record_dp={...}).to_record()`` builds the record the round loop
sends today (``dp`` and ``record_dp`` without prefix; None leaves the whole group out);
``Refusal.from_record(reply.content)`` is None for a reply that is not a refusal;
``TrainReply.from_record(reply.content)`` reads a reply (`ProtocolError` names the
missing or mistyped part; screening the values is `fedsilo.privacy.screening`'s job).

The record and key names below are the module-level constants the rest of the code has
always imported from `fedsilo.common.codec` too (which re-exports them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict

from .errors import FedsiloError

# Record names inside a Flower RecordDict, and the keys inside them.
# Server -> site (train):  "global" ArrayRecord {"model": flat}, "config" ConfigRecord
#                          (`RoundConfig`), "federation" ConfigRecord.
# Site -> server (train):  "update" ArrayRecord {"delta": flat}, "metrics" MetricRecord
#                          ({"num-examples", ...}), "site" ConfigRecord (`TrainReply`),
#                          or "refusal" ConfigRecord {"site_id", "reason"} (`Refusal`).
GLOBAL_RECORD = "global"
MODEL_KEY = "model"
CONFIG_RECORD = "config"
FEDERATION_RECORD = "federation"
UPDATE_RECORD = "update"
DELTA_KEY = "delta"
METRICS_RECORD = "metrics"
SITE_RECORD = "site"
REFUSAL_RECORD = "refusal"
NUM_EXAMPLES_KEY = "num-examples"
DP_PREFIX = "dp_"
"""Prefix of the client-level DP parameters in the round config (`RoundConfig.dp`)."""
RECORD_DP_PREFIX = "record_dp_"
"""Prefix of the record-level DP-SGD parameters in the round config (`RoundConfig.record_dp`)."""
SECAGG_ERROR_CODE = 1001
"""Flower ``Error`` code of a site's SecAgg+ protocol error (outside Flower's own codes)."""
REFUSAL_ERROR_CODE = 1002
"""Flower ``Error`` code of a site's refusal inside a SecAgg+ stage (`Refusal.to_error`)."""
REFUSAL_PREFIX = "refused by site: "
"""How a refusal's reason reads in the server's records (`Refusal.to_error`)."""


class ProtocolError(FedsiloError, ValueError):
    """A record does not follow the wire contract; the message names the key and what
    was expected, in one line."""


_NUMBER = (int, float)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    # bool is an int in Python, never a count or a rate on the wire
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


# The round config's own keys, in the order the server writes them, with their types.
_ROUND_KEYS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "server_round": (int,), "lr": _NUMBER, "local_epochs": (int,),
    "rounds_total": (int,), "proximal_mu": _NUMBER, "aggregator": (str,),
    "optimizer": (str,), "layout": (str,), "update_layout": (str,),
    "server_key_fingerprint": (str,), "secagg": (bool,), "attestation_prev": (str,),
}


@dataclass(frozen=True)
class RoundConfig:
    """The round config the server sends with a ``train`` or ``evaluate`` message.

    Every field is None when the record does not carry it (Flower records cannot hold
    None, so None always means "absent"); `to_record` leaves it out.

    Parameters
    ----------
    run_id : the run's id (bound into every signature).
    server_round : the round number (>= 1).
    lr, local_epochs, proximal_mu : the sites' training hyper-parameters.
    rounds_total : rounds the run is configured for.
    aggregator, optimizer : the strategy names (``name`` or ``name:options``).
    layout : the global model's layout (`fedsilo.common.codec.ModelLayout` JSON).
    update_layout : with frozen layers, the layout of the update a site sends back.
    server_key_fingerprint : fingerprint of the server's signing key.
    secagg : whether the round is securely aggregated.
    dp : client-level DP parameters (`fedsilo.privacy.dp.ClientLevelDP.round_config`),
        sent as ``dp_<name>``; None: the round has no client-level DP.
    record_dp : record-level DP-SGD parameters, sent as ``record_dp_<name>``.
    attestation_prev : in a plain round, the digest of this site's previous attestation in
        the run as the server recorded it (``fedsilo.lineage.GENESIS_ATTESTATION`` for its
        first): the site signs it into its contribution (a per-site chain, so that one
        signature covers the site's whole chain) after checking it against its own ledger.
        Set per site (`with_attestation_prev`); None: the unchained contribution.
    extra : keys this contract does not name, kept as sent (after the named ones).
    key_order : set by `from_record` only for a record whose keys came in another order
        than the server's: `to_dict` then keeps that order (not compared).
    """

    run_id: str | None = None
    server_round: int | None = None
    lr: float | None = None
    local_epochs: int | None = None
    rounds_total: int | None = None
    proximal_mu: float | None = None
    aggregator: str | None = None
    optimizer: str | None = None
    layout: str | None = None
    update_layout: str | None = None
    server_key_fingerprint: str | None = None
    secagg: bool | None = None
    attestation_prev: str | None = None
    dp: Mapping[str, Any] | None = None
    record_dp: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def round(self) -> int:
        """The round number (0 when the record carries none)."""
        return self.server_round or 0

    @property
    def run(self) -> str:
        """The run id ("" when the record carries none)."""
        return self.run_id or ""

    @property
    def sent_layout(self) -> str | None:
        """The layout the site's update is flattened with: ``update_layout`` (frozen
        layers left out) if the round has one, else ``layout``."""
        return self.update_layout if self.update_layout is not None else self.layout

    @property
    def dp_where(self) -> str | None:
        """Where client-level DP clips (``"server"`` or ``"site"``), None without DP."""
        return None if self.dp is None else str(self.dp.get("where", ""))

    def to_dict(self) -> dict[str, Any]:
        """The record's items as a plain dict, in the server's order: the named keys,
        then ``dp_*``, ``record_dp_*`` and the extra keys (what a Trainer receives)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _ROUND_KEYS
                               if getattr(self, k) is not None}
        for prefix, group in ((DP_PREFIX, self.dp), (RECORD_DP_PREFIX, self.record_dp)):
            out.update({f"{prefix}{k}": v for k, v in (group or {}).items()})
        out.update(self.extra)
        if self.key_order is not None and set(self.key_order) == set(out):
            out = {k: out[k] for k in self.key_order}
        return out

    def to_record(self) -> ConfigRecord:
        """The ``config`` ConfigRecord, exactly as the server's round loop builds it."""
        return ConfigRecord(self.to_dict())

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundConfig:
        """Read a ``config`` record (or a plain mapping of its items).

        `ProtocolError` if a named key holds a value of the wrong type.
        """
        named: dict[str, Any] = {}
        dp: dict[str, Any] = {}
        record_dp: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in record.items():
            if key in _ROUND_KEYS:
                if not _is(value, _ROUND_KEYS[key]):
                    kinds = " or ".join(t.__name__ for t in _ROUND_KEYS[key])
                    raise ProtocolError(f"round config: {key!r} must be {kinds}, "
                                        f"got {value!r:.60}")
                named[key] = value
            elif key.startswith(RECORD_DP_PREFIX):
                record_dp[key[len(RECORD_DP_PREFIX):]] = value
            elif key.startswith(DP_PREFIX):
                dp[key[len(DP_PREFIX):]] = value
            else:
                extra[key] = value
        cfg = cls(**named, dp=dp or None, record_dp=record_dp or None, extra=extra)
        order = tuple(record)
        if tuple(cfg.to_dict()) != order:
            # keys in another order than the server's: remember it, so that to_dict()
            # still gives back exactly what was received
            cfg = cls(**named, dp=dp or None, record_dp=record_dp or None, extra=extra,
                      key_order=order)
        return cfg


def with_attestation_prev(content: RecordDict, prev: str) -> RecordDict:
    """A copy of a train message's ``content`` whose round config also carries
    ``attestation_prev`` (one site's chain head); the other records are shared, not copied."""
    out = RecordDict(dict(content.items()))
    config = content.get(CONFIG_RECORD)
    cfg = RoundConfig.from_record(config if isinstance(config, ConfigRecord) else {})
    # through RoundConfig, so the key takes its place in the contract's order
    out[CONFIG_RECORD] = replace(cfg, attestation_prev=prev).to_record()
    return out


def _config(content: RecordDict, name: str) -> ConfigRecord:
    rec = content.get(name)
    if not isinstance(rec, ConfigRecord):
        raise ProtocolError(f"reply: no {name!r} ConfigRecord")
    return rec


def _str(rec: Mapping[str, Any], record: str, key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{record}: {key!r} must be a str, got {value!r:.60}")
    return value


@dataclass(frozen=True)
class TrainReply:
    """A site's update for one round, as it travels to the server.

    Parameters
    ----------
    site_id : the site's stable id.
    update : the flat float32 delta as a Flower `Array` (`codec.encode_flat`).
    num_examples : the example count the update was trained on (its weight).
    metrics : the Trainer's training metrics (plain numbers).
    update_digest : `fedsilo.lineage.update_digest` of the delta's bytes.
    data_fingerprint : the site's data fingerprint.
    signature : the site's signature over (run id, round, update digest, data
        fingerprint); "" for a site without a key.
    layout : the layout the delta was flattened with (`RoundConfig.sent_layout`).
    """

    site_id: str
    update: Array
    num_examples: int
    metrics: Mapping[str, float]
    update_digest: str
    data_fingerprint: str
    signature: str
    layout: str

    def to_record(self) -> RecordDict:
        """The reply's content: ``update``, ``metrics`` and ``site`` records."""
        return RecordDict({
            UPDATE_RECORD: ArrayRecord({DELTA_KEY: self.update}),
            METRICS_RECORD: MetricRecord({NUM_EXAMPLES_KEY: self.num_examples,
                                          **self.metrics}),
            SITE_RECORD: ConfigRecord({
                "site_id": self.site_id, "update_digest": self.update_digest,
                "data_fingerprint": self.data_fingerprint, "signature": self.signature,
                "layout": self.layout}),
        })

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        """Read a reply's content; `ProtocolError` names the first part missing or of the
        wrong type (the values themselves are screened by the server)."""
        arrays = content.get(UPDATE_RECORD)
        if not isinstance(arrays, ArrayRecord) or DELTA_KEY not in arrays:
            raise ProtocolError(f"reply: no {UPDATE_RECORD!r} ArrayRecord with {DELTA_KEY!r}")
        metrics = content.get(METRICS_RECORD)
        if not isinstance(metrics, MetricRecord) or NUM_EXAMPLES_KEY not in metrics:
            raise ProtocolError(f"reply: no {METRICS_RECORD!r} MetricRecord with "
                                f"{NUM_EXAMPLES_KEY!r}")
        count = metrics[NUM_EXAMPLES_KEY]
        if not _is(count, (int,)):
            raise ProtocolError(f"{METRICS_RECORD}: {NUM_EXAMPLES_KEY!r} must be an int, "
                                f"got {count!r:.60}")
        site = _config(content, SITE_RECORD)
        return cls(
            site_id=_str(site, SITE_RECORD, "site_id"), update=arrays[DELTA_KEY],
            num_examples=int(count),  # type: ignore[arg-type]
            metrics={k: v for k, v in metrics.items() if k != NUM_EXAMPLES_KEY},  # type: ignore[misc]
            **{k: _str(site, SITE_RECORD, k)
               for k in ("update_digest", "data_fingerprint", "signature", "layout")})


@dataclass(frozen=True)
class Refusal:
    """A site that sends no update this round, and why (one line, for lineage).

    Parameters
    ----------
    site_id : the site's stable id.
    reason : why it sends nothing (its policy, its privacy budget, a result of its
        Trainer that cannot be sent...).
    """

    site_id: str
    reason: str

    def to_record(self) -> RecordDict:
        """The reply's content in a plain round: the ``refusal`` ConfigRecord."""
        return RecordDict({REFUSAL_RECORD: ConfigRecord({"site_id": self.site_id,
                                                         "reason": self.reason})})

    @classmethod
    def from_record(cls, content: RecordDict) -> Refusal | None:
        """The refusal in a reply's content, or None if the reply is not a refusal."""
        rec = content.get(REFUSAL_RECORD)
        if not isinstance(rec, ConfigRecord):
            return None
        return cls(str(rec.get("site_id", "")), str(rec.get("reason", "")))

    def to_error(self) -> Error:
        """The refusal inside a SecAgg+ stage: an ``Error`` the server's SecAgg+ round
        takes as that site leaving the round, with the reason (the site is then
        recovered through its key shares, as any dropout)."""
        return Error(REFUSAL_ERROR_CODE, f"{REFUSAL_PREFIX}{self.reason}")

    @classmethod
    def from_error(cls, error: Error, site_id: str = "") -> Refusal | None:
        """The refusal an ``Error`` reply carries, or None if it is another error."""
        if error.code != REFUSAL_ERROR_CODE:
            return None
        reason = error.reason or ""
        return cls(site_id, reason.removeprefix(REFUSAL_PREFIX))

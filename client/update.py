"""The one path from a round's request to a site's update, plain or under SecAgg+.

`site_reply` is the only place a site decides what it sends for a training round:

1. the site's Trainer step, `train_update`: the site's policy (`SitePolicy.refusal`), its
   own privacy budget (`fedsilo.privacy.site_budget`), local training (`local_delta`: the
   Trainer's fit, the layout check, frozen layers dropped, the count checked against the
   declaration), then DP clipping at the site when the round asks for it;
2. the encoding: plain (the flat float32 delta, `fedsilo.common.codec.encode_flat`)
   or masked (`fedsilo.client.secagg_handler`), given as an `Encoder` that returns the
   digest of exactly what is sent and the encoded payload;
3. the site's signature over (run id, round, digest, data fingerprint and, in a plain
   round, ``prev``: its previous attestation, which it first checks against its own ledger)
   and its ledger entry (``sent``, with ``prev`` and ``attestation`` when chained, with
   ``"secagg": "masked_input"`` under SecAgg+).

It returns a `Sent` update, or a `fedsilo.common.protocol.Refusal` when the policy or the
budget says no or the Trainer's result cannot be sent (`ContributionError`); a refusal is
recorded in the site's ledger (``refused``, with the reason) before it is returned. The
caller answers it: with a ``refusal`` record in a plain round, with
`Refusal.to_error` inside a SecAgg+ stage. Nothing here raises a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedsilo import lineage
from fedsilo.client.app_code import app_digest_field
from fedsilo.common import codec
from fedsilo.common.errors import FedsiloError
from fedsilo.common.protocol import Refusal, RoundConfig
from fedsilo.privacy.screening import example_count, layout_problem

if TYPE_CHECKING:
    from fedsilo.client.app import Site

P = TypeVar("P")


class ContributionError(FedsiloError, ValueError):
    """What the Trainer returned cannot be sent (wrong layout or example count); one line.

    The SDK replies with a refusal carrying this reason (the server records it in
    lineage) instead of flattening a scrambled update or crashing the ClientApp.
    """


@dataclass
class LocalUpdate:
    """What a site's training step returns, before it is encoded.

    delta: flat float32 model update (length = number of parameters sent).
    weight: aggregation weight (e.g. example count; under SecAgg+ in [0, max_weight]).
    metrics: plaintext training metrics (under SecAgg+ they are NOT protected).
    num_examples: the example count, for the site's ledger (default: the weight).
    """

    delta: np.ndarray
    weight: float
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: int | None = None


class SiteSigner(Protocol):
    """What the update path needs of a site to sign and record what it sends
    (`fedsilo.client.Site` is one)."""

    site_id: str
    key: Any  # Ed25519PrivateKey | None
    ledger: Any  # fedsilo.lineage.SiteLedger | None

    @property
    def data_fingerprint(self) -> str: ...


@dataclass(frozen=True)
class Sent(Generic[P]):
    """An update the site sends: the encoder's payload, with what the site signed.

    payload: the encoded update (plain: a Flower `Array`; SecAgg+: the masked reply).
    digest: `fedsilo.lineage.update_digest` of exactly the vector sent.
    signature: the site's signature over (run id, round, digest, data fingerprint); ""
        for a site without a key.
    num_examples: the example count (recorded in the ledger; in a plain reply's metrics).
    metrics: the Trainer's training metrics.
    """

    payload: P
    digest: str
    signature: str
    num_examples: int
    metrics: dict[str, float]


Encoder = Callable[[np.ndarray, float], tuple[str, P]]
"""(delta, weight) -> (digest of exactly what is sent, encoded payload)."""


def plain_encoder(delta: np.ndarray, weight: float) -> tuple[str, Array]:
    """A plain round's encoding: the flat float32 delta as it is (its weight travels as
    the reply's example count)."""
    return lineage.update_digest(delta), codec.encode_flat(delta)


def site_reply(signer: SiteSigner | None, cfg: RoundConfig,
               train: Callable[[], LocalUpdate | Refusal], encode: Encoder[P], *,
               secagg: bool = False) -> Sent[P] | Refusal:
    """The site's answer to a training round: a `Sent` update or a `Refusal`.

    Parameters
    ----------
    signer : the site (id, key, data fingerprint, ledger); None: nothing is signed or
        recorded.
    cfg : the round (its run id and round number are bound into the signature and the
        ledger entry).
    train : the site's training step (`train_update` for a `Site`): the update to send,
        or a refusal; `ContributionError` becomes a refusal too.
    encode : plain (`plain_encoder`) or masked encoding of the update.
    secagg : the update is a SecAgg+ masked input (noted in the ledger entry).
    """
    site_id = signer.site_id if signer is not None else ""
    # a plain round's attestation is chained onto the site's previous one (the server sends
    # its digest); the site vouches only for a prev its own ledger holds
    prev = None if secagg or signer is None or signer.key is None else cfg.attestation_prev
    if prev is not None and signer is not None and signer.ledger is not None:
        reason = signer.ledger.prev_refusal(cfg.run, prev)
        if reason is not None:
            _ledger(signer, cfg, {"status": "refused", "reason": reason})
            return Refusal(signer.site_id, reason)
    try:
        outcome = train()
    except ContributionError as exc:  # the Trainer's result cannot be sent as it is
        outcome = Refusal(site_id, f"update not sent: {exc}")
    if isinstance(outcome, Refusal):
        _ledger(signer, cfg, {"status": "refused", "reason": outcome.reason})
        return outcome
    digest, payload = encode(outcome.delta, outcome.weight)
    signature, chained = "", {}
    if signer is not None and signer.key is not None:
        message = lineage.contribution_message(cfg.run, cfg.round, digest,
                                               signer.data_fingerprint, prev)
        signature = signer.key.sign(message).hex()
        if prev is not None:
            chained = {"prev": prev, "attestation": lineage.attestation_digest(message)}
    count = int(outcome.num_examples if outcome.num_examples is not None else outcome.weight)
    if signer is not None and signer.ledger is not None:
        _ledger(signer, cfg, {"status": "sent", "update_digest": digest,
                              "data_fingerprint": signer.data_fingerprint,
                              "num_examples": count, "signature": signature, **chained,
                              **({"secagg": "masked_input"} if secagg else {})})
    metrics = {k: float(v) for k, v in outcome.metrics.items()} if secagg else dict(outcome.metrics)
    return Sent(payload, digest, signature, count, metrics)


def _ledger(signer: SiteSigner | None, cfg: RoundConfig, entry: Mapping[str, Any]) -> None:
    if signer is None or signer.ledger is None:
        return
    signer.ledger.append({"run_id": cfg.run, "site_id": signer.site_id, "round": cfg.round,
                          **entry, "time": _now_iso(), **app_digest_field()})


def train_update(site: Site, msg: Message, cfg: RoundConfig, *,
                 secure: bool = False) -> LocalUpdate | Refusal:
    """A `Site`'s training step for ``site_reply``: policy, privacy budget, training,
    clipping.

    ``secure``: the update enters a SecAgg+ sum. With DP clipped at the site, it then
    clips (and caps its weight) itself and enters the sum with weight 1, so that the
    server's noise covers the sum's sensitivity; in a plain round it only clips.
    """
    reason = site.policy.refusal(cfg) or _privacy_refusal(site, cfg)
    if reason is not None:
        return Refusal(site.site_id, reason)
    delta, num_examples, metrics = local_delta(site, msg, cfg)
    weight = float(num_examples)
    if cfg.dp is not None and cfg.dp_where == "site":
        from fedsilo.privacy.dp import clip_update, site_contribution

        if secure:
            delta, _unclipped = site_contribution(delta, cfg.dp, weight=num_examples)
            weight = 1.0
        else:
            delta, _norm, _was_clipped = clip_update(delta, float(cfg.dp["clip_norm"]))
    _record_privacy_participation(site, cfg)
    return LocalUpdate(delta=delta, weight=weight, metrics=metrics, num_examples=num_examples)


def round_config(config: RoundConfig | Mapping[str, Any]) -> RoundConfig:
    """``config`` as a `RoundConfig` (a mapping is read with `RoundConfig.from_record`)."""
    return config if isinstance(config, RoundConfig) else RoundConfig.from_record(config)


def global_model(msg: Message) -> Array:
    """The global model's flat array; KeyError if the message does not carry one."""
    rec = codec.record(msg.content, codec.GLOBAL_RECORD, ArrayRecord)
    if rec is None:
        raise KeyError(codec.GLOBAL_RECORD)
    return rec[codec.MODEL_KEY]


def local_delta(site: Site, msg: Message, config: RoundConfig | Mapping[str, Any]
                ) -> tuple[np.ndarray, int, dict[str, float]]:
    """Train on the message's global model; return (flat float32 delta, examples, metrics).

    `ContributionError` (one line) when the Trainer's weights do not have the global
    model's layout or its example count is not a positive integer within the declared one.
    """
    cfg = round_config(config)
    if cfg.layout is None:
        raise KeyError("layout")
    layout = codec.ModelLayout.from_json(cfg.layout)
    global_flat = codec.decode_flat(global_model(msg), expected_size=layout.size)
    global_weights = layout.unflatten(global_flat)
    # the Trainer gets the round config as the server sent it, and, under record-level DP,
    # the releases of the site's own data profile, which its DP-SGD accountant composes
    trainer_config = cfg.to_dict()
    if site.state.get("record_releases") and cfg.record_dp is not None:
        trainer_config["record_dp_releases"] = list(site.state["record_releases"])
    fit = site.apply_statistics(msg).trainer.fit(global_weights, trainer_config)
    weights = _checked_weights(fit.weights, layout)
    num_examples = _checked_count(fit.num_examples, site.declared_examples)
    if cfg.update_layout is not None:
        # the task's frozen layers are not sent back: the update covers the trainable ones
        sent = codec.ModelLayout.from_json(cfg.update_layout)
        delta = sent.flatten({k: weights[k] for k in sent.names}) - sent.flatten(
            {k: global_weights[k] for k in sent.names})
    else:
        delta = layout.flatten(weights) - global_flat
    return delta.astype(np.float32, copy=False), num_examples, dict(fit.metrics)


def _checked_weights(weights: Any, layout: codec.ModelLayout) -> dict[str, np.ndarray]:
    """The Trainer's weights as arrays, if every layer's name, shape and dtype is the global
    model's; else `ContributionError`. Flattening alone would drop an extra layer and
    accept a transposed one of the same size as a scrambled update."""
    if not isinstance(weights, Mapping):
        raise ContributionError(f"layout: the Trainer returned weights as a "
                                f"{type(weights).__name__}; expected a mapping layer name -> array")
    try:
        arrays = {str(k): np.asarray(v) for k, v in weights.items()}
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ContributionError(f"layout: a layer the Trainer returned is not an array ({exc})") from None
    problem = layout_problem(layout, codec.ModelLayout.from_arrays(arrays), ordered=False)
    if problem is not None:
        raise ContributionError(f"layout: {problem}")
    return arrays


def _checked_count(value: Any, declared: int | None) -> int:
    """The Trainer's example count if it is a positive integer within the declared one."""
    try:
        n = example_count(value)
    except ValueError as exc:
        raise ContributionError(f"num-examples {exc}") from None
    if declared is not None and n > declared:
        raise ContributionError(f"num-examples {n} exceeds the {declared} examples the site "
                                "declared at the handshake")
    return n


def _privacy_refusal(site: Site, cfg: RoundConfig) -> str | None:
    """Refuse a DP round that would take the site past its own epsilon ceiling."""
    if site.policy.max_epsilon is None or cfg.dp is None or "noise_multiplier" not in cfg.dp:
        return None
    from fedsilo.privacy.site_budget import SiteBudget

    budget = site.state.get("budget")
    if budget is None:
        budget = site.state["budget"] = SiteBudget(site.policy.max_epsilon)
    ok, _eps, reason = budget.admit(dict(cfg.dp))
    return None if ok else reason


def _record_privacy_participation(site: Site, cfg: RoundConfig) -> None:
    budget = site.state.get("budget")
    if budget is not None and cfg.dp is not None and "noise_multiplier" in cfg.dp:
        budget.record_participation(dict(cfg.dp))


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")

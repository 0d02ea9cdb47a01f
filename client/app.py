"""Turn a site (a `Trainer` plus identity and policy) into a Flower `ClientApp`.

The ClientApp answers three kinds of message:

* ``query.handshake``: the site's stable id, public key, data fingerprint, policy and
  declared example count, with its signature over (run id, site id, data fingerprint,
  count) (`lineage.signing.sign_declaration`);
* ``train``: train on the global model, reply with the flat model delta, its digest,
  the layout it was flattened with and the site's signature over (run id, round,
  update digest, data fingerprint), after checking the round against the site's policy
  and the Trainer's result against the global model's layout and the declared count (a
  refusal is a normal reply with the reason, recorded in the site's ledger and, by the
  server, in lineage);
* ``evaluate``: score the global model on the site's own held-out split, signed over
  (run id, round, model digest, loss, metrics, count) (`fedsilo.client.evaluation`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsilo import lineage
from fedsilo.client.app_code import app_digest_field
from fedsilo.client.policy import SitePolicy
from fedsilo.client.trainer import DeclaresExamples, Trainer
from fedsilo.lineage.signing import sign_declaration
from fedsilo.privacy.screening import example_count, layout_problem
from fedsilo.strategies import codec
from fedsilo.tasks.statistics import (
    STATISTICS_KEY,
    STATISTICS_RECORD,
    decode_statistics,
    encode_statistics,
)


class ContributionError(ValueError):
    """What the Trainer returned cannot be sent (wrong layout or example count); one line.

    The SDK replies with a refusal carrying this reason (the server records it in
    lineage) instead of flattening a scrambled update or crashing the ClientApp.
    """


@dataclass
class Site:
    """A data-holding site as the ClientApp sees it.

    Parameters
    ----------
    site_id : stable identifier of the site (Flower node ids change every run).
    trainer : the site's local training and evaluation.
    key : the site's Ed25519 signing key (None: replies are unsigned).
    ledger : the site's own append-only ledger of what it sent (None: no ledger).
    policy : rules the site enforces on every round.
    state : per-site mutable state kept between rounds in this process (privacy
        budget bookkeeping and the like).
    num_examples : the example count the site declares at the handshake (None: the
        Trainer's ``num_examples()``, see `DeclaresExamples`).
    task_identity : the site's `fedsilo.tasks.TaskIdentity` as a dict, sent at the
        handshake (the server refuses a site whose task differs from its own).
    statistics_fn : the site's per-site sums for the task's federated statistics
        (`Task.site_statistics`), answered to the server's statistics query.
    trainer_factory : builds the site's Trainer with the federation's summed statistics
        (sent with every train and evaluate message once they exist).
    """

    site_id: str
    trainer: Trainer
    key: Any = None
    ledger: Any = None
    policy: SitePolicy = field(default_factory=SitePolicy)
    state: dict[str, Any] = field(default_factory=dict)
    num_examples: int | None = None
    task_identity: Mapping[str, str] | None = None
    statistics_fn: Callable[[], Mapping[str, np.ndarray] | None] | None = None
    trainer_factory: Callable[[Mapping[str, np.ndarray]], Trainer] | None = None
    _fingerprint: str | None = None

    @property
    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.trainer.data_fingerprint()
        return self._fingerprint

    @property
    def public_key(self) -> str:
        return lineage.public_key_hex(self.key) if self.key is not None else ""

    @property
    def declared_examples(self) -> int | None:
        """The count declared at the handshake: ``num_examples``, else the Trainer's."""
        if self.num_examples is not None:
            return self.num_examples
        if isinstance(self.trainer, DeclaresExamples):
            return self.trainer.num_examples()
        return None

    def apply_statistics(self, msg: Message) -> Site:
        """Use the Trainer built with the federation's statistics that ``msg`` carries
        (rebuilt only when they change); a message without statistics changes nothing."""
        rec = codec.record(msg.content, STATISTICS_RECORD, ConfigRecord)
        if rec is None or self.trainer_factory is None:
            return self
        text = str(rec.get(STATISTICS_KEY, ""))
        if self.state.get("statistics") != text:
            self.data_fingerprint  # noqa: B018 - fixed from the handshake's Trainer first
            where = f"site {self.site_id}: statistics from the server"
            self.trainer = self.trainer_factory(decode_statistics(text, where))
            self.state["statistics"] = text
        return self


SiteFactory = Callable[[Context, Mapping[str, Any]], Site]
"""Builds (or returns a cached) `Site` from the node's context and the federation record."""


def _config(msg: Message, name: str) -> dict[str, Any]:
    rec = codec.record(msg.content, name, ConfigRecord)
    return dict(rec) if rec is not None else {}


def _global_model(msg: Message) -> Array:
    """The global model's flat array; KeyError if the message does not carry one."""
    rec = codec.record(msg.content, codec.GLOBAL_RECORD, ArrayRecord)
    if rec is None:
        raise KeyError(codec.GLOBAL_RECORD)
    return rec[codec.MODEL_KEY]


def _first_secagg_keys(msg: Message, context: Context) -> tuple[str, ConfigRecord] | None:
    """(record name, key advertisement) for the run's first SecAgg+ round, when the
    handshake carries that round's setup request (see `advertise_first_keys`)."""
    try:
        from fedsilo.client.secagg_handler import advertise_first_keys
        from fedsilo.privacy.secagg.records import NEXT_KEY
    except ImportError:  # pragma: no cover - only while secagg is being built
        return None
    if NEXT_KEY not in msg.content:
        return None
    run_id = str(_config(msg, codec.FEDERATION_RECORD).get("run_id", ""))
    rec = advertise_first_keys(msg, context, run_id)
    return None if rec is None else (NEXT_KEY, rec)


def make_client_app(site_factory: SiteFactory) -> ClientApp:
    """A Flower ClientApp serving the site that ``site_factory`` builds."""
    app = ClientApp()

    @app.query("handshake")
    def handshake(msg: Message, context: Context) -> Message:
        federation = _config(msg, codec.FEDERATION_RECORD)
        site = site_factory(context, federation)
        record = ConfigRecord(
            {
                "site_id": site.site_id,
                "public_key": site.public_key,
                "data_fingerprint": site.data_fingerprint,
                "policy": site.policy.to_json(),
                **_declaration(site, str(federation.get("run_id", ""))),
                **app_digest_field(),  # the app bundle this site checked and runs
                **({"task_identity": json.dumps(dict(site.task_identity), sort_keys=True)}
                   if site.task_identity is not None else {}),
            }
        )
        content = RecordDict({codec.SITE_RECORD: record})
        keys = _first_secagg_keys(msg, context)
        if keys is not None:
            content[keys[0]] = keys[1]
        return Message(content, reply_to=msg)

    @app.query("statistics")
    def statistics(msg: Message, context: Context) -> Message:
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        stats = site.statistics_fn() if site.statistics_fn is not None else None
        record = ConfigRecord({"site_id": site.site_id,
                               STATISTICS_KEY: "" if stats is None else encode_statistics(stats)})
        return Message(RecordDict({STATISTICS_RECORD: record}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        return _train_reply(site, msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        # the site scores the global model on its own held-out split and signs the score
        from fedsilo.client.evaluation import evaluation_content

        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD)).apply_statistics(msg)
        config = _config(msg, codec.CONFIG_RECORD)
        layout = codec.ModelLayout.from_json(str(config["layout"]))
        flat = codec.decode_flat(_global_model(msg), expected_size=layout.size)
        return Message(evaluation_content(site, layout.unflatten(flat), config), reply_to=msg)

    try:  # secure aggregation stages, when that module is present
        from fedsilo.client.secagg_handler import LocalUpdate, register_secagg
    except ImportError:  # pragma: no cover - only while secagg is being built
        return app

    def fit_update(msg: Message, context: Context) -> LocalUpdate:
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        config = _config(msg, codec.CONFIG_RECORD)
        reason = site.policy.refusal(config) or _privacy_refusal(site, config)
        if reason is not None:
            raise RuntimeError(f"site {site.site_id} refused: {reason}")
        delta, num_examples, metrics = local_delta(site, msg, config)
        _record_privacy_participation(site, config)
        if str(config.get("dp_where", "")) == "site":
            # DP under secure aggregation: the site clips (and caps its weight) itself and
            # enters the sum with weight 1, so the server's noise covers the sum's sensitivity.
            from fedsilo.privacy.dp import site_contribution

            clipped, _unclipped = site_contribution(delta, _dp_round_config(config), weight=num_examples)
            return LocalUpdate(delta=clipped, weight=1.0, metrics=metrics,
                               num_examples=num_examples)
        return LocalUpdate(delta=delta, weight=float(num_examples), metrics=metrics,
                           num_examples=num_examples)

    def identify(msg: Message, context: Context) -> Site:
        # the site signs its masked input and unmask reply with its key, as a plain update
        return site_factory(context, _config(msg, codec.FEDERATION_RECORD))

    register_secagg(app, fit_update, identify)
    return app


def local_delta(site: Site, msg: Message, config: Mapping[str, Any]) -> tuple[np.ndarray, int, dict[str, float]]:
    """Train on the message's global model; return (flat float32 delta, examples, metrics).

    `ContributionError` (one line) when the Trainer's weights do not have the global
    model's layout or its example count is not a positive integer within the declared one.
    """
    layout = codec.ModelLayout.from_json(str(config["layout"]))
    global_flat = codec.decode_flat(
        _global_model(msg), expected_size=layout.size
    )
    global_weights = layout.unflatten(global_flat)
    fit = site.apply_statistics(msg).trainer.fit(global_weights, config)
    weights = _checked_weights(fit.weights, layout)
    num_examples = _checked_count(fit.num_examples, site.declared_examples)
    if "update_layout" in config:
        # the task's frozen layers are not sent back: the update covers the trainable ones
        sent = codec.ModelLayout.from_json(str(config["update_layout"]))
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


def _declaration(site: Site, run_id: str) -> dict[str, Any]:
    """The handshake fields declaring the site's example count: ``num_examples`` and
    ``declaration``, its signature (none without a key). A count that is not a positive
    integer is sent as it is, for the server to refuse with the value in its reason."""
    declared = site.declared_examples
    if declared is None:
        return {}
    try:
        n = example_count(declared)
    except ValueError:
        ok = isinstance(declared, int | float) and not isinstance(declared, bool)
        return {"num_examples": declared if ok else repr(declared)}
    out: dict[str, Any] = {"num_examples": n}
    if site.key is not None:
        try:
            out["declaration"] = sign_declaration(site.key, run_id, site.site_id,
                                                  site.data_fingerprint, n)
        except ValueError:  # a malformed run id or fingerprint: the server refuses the site
            out["declaration"] = ""
    return out


def _site_side_clip(delta: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Clip the update at the site when the round asks for site-side DP clipping."""
    if str(config.get("dp_where", "")) != "site":
        return delta
    from fedsilo.privacy.dp import clip_update

    clipped, _norm, _was_clipped = clip_update(delta, float(config["dp_clip_norm"]))
    return clipped


def _refusal(site: Site, msg: Message, run_id: str, server_round: int, reason: str) -> Message:
    """A refusal reply (and its ledger entry): the site sends no update this round."""
    if site.ledger is not None:
        site.ledger.append(
            {"run_id": run_id, "site_id": site.site_id, "round": server_round,
             "status": "refused", "reason": reason, "time": _now_iso(), **app_digest_field()}
        )
    refusal = ConfigRecord({"site_id": site.site_id, "reason": reason})
    return Message(RecordDict({codec.REFUSAL_RECORD: refusal}), reply_to=msg)


def _train_reply(site: Site, msg: Message) -> Message:
    config = _config(msg, codec.CONFIG_RECORD)
    run_id = str(config.get("run_id", ""))
    server_round = int(config.get("server_round", 0))
    reason = site.policy.refusal(config)
    if reason is None:
        reason = _privacy_refusal(site, config)
    if reason is not None:
        return _refusal(site, msg, run_id, server_round, reason)

    try:
        delta, num_examples, metrics = local_delta(site, msg, config)
    except ContributionError as exc:  # the Trainer's result cannot be sent as it is
        return _refusal(site, msg, run_id, server_round, f"update not sent: {exc}")
    delta = _site_side_clip(delta, config)
    digest = lineage.update_digest(delta)
    signature = (
        lineage.sign_contribution(site.key, run_id, server_round, digest, site.data_fingerprint)
        if site.key is not None
        else ""
    )
    if site.ledger is not None:
        site.ledger.append(
            {"run_id": run_id, "site_id": site.site_id, "round": server_round,
             "update_digest": digest, "data_fingerprint": site.data_fingerprint,
             "num_examples": num_examples, "signature": signature, "status": "sent",
             "time": _now_iso(), **app_digest_field()}
        )
    _record_privacy_participation(site, config)
    content = RecordDict(
        {
            codec.UPDATE_RECORD: ArrayRecord({codec.DELTA_KEY: codec.encode_flat(delta)}),
            codec.METRICS_RECORD: MetricRecord({codec.NUM_EXAMPLES_KEY: num_examples, **metrics}),
            codec.SITE_RECORD: ConfigRecord(
                {"site_id": site.site_id, "update_digest": digest,
                 "data_fingerprint": site.data_fingerprint, "signature": signature,
                 "layout": str(config.get("update_layout", config["layout"]))}
            ),
        }
    )
    return Message(content, reply_to=msg)


def _privacy_refusal(site: Site, config: Mapping[str, Any]) -> str | None:
    """Refuse a DP round that would take the site past its own epsilon ceiling."""
    if site.policy.max_epsilon is None or "dp_noise_multiplier" not in config:
        return None
    from fedsilo.privacy.site_budget import SiteBudget

    budget = site.state.get("budget")
    if budget is None:
        budget = site.state["budget"] = SiteBudget(site.policy.max_epsilon)
    ok, _eps, reason = budget.admit(_dp_round_config(config))
    return None if ok else reason


def _record_privacy_participation(site: Site, config: Mapping[str, Any]) -> None:
    budget = site.state.get("budget")
    if budget is not None and "dp_noise_multiplier" in config:
        budget.record_participation(_dp_round_config(config))


def _dp_round_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The DP parameters the server sent, without the ``dp_`` prefix."""
    return {k[3:]: v for k, v in config.items() if k.startswith("dp_")}


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")

"""Turn a site (a `Trainer` plus identity and policy) into a Flower `ClientApp`.

The ClientApp answers three kinds of message:

* ``query.handshake``: the site's stable id, public key, data fingerprint and policy;
* ``train``: train on the global model, reply with the flat model delta, its digest
  and the site's signature over (run id, round, update digest, data fingerprint),
  after checking the round against the site's policy (a refusal is a normal reply
  with the reason, recorded in the site's ledger and, by the server, in lineage);
* ``evaluate``: evaluate the global model on local data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsilo import lineage
from fedsilo.client.policy import SitePolicy
from fedsilo.client.trainer import Trainer
from fedsilo.strategies import codec


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
    """

    site_id: str
    trainer: Trainer
    key: Any = None
    ledger: Any = None
    policy: SitePolicy = field(default_factory=SitePolicy)
    state: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = None

    @property
    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.trainer.data_fingerprint()
        return self._fingerprint

    @property
    def public_key(self) -> str:
        return lineage.public_key_hex(self.key) if self.key is not None else ""


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
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        record = ConfigRecord(
            {
                "site_id": site.site_id,
                "public_key": site.public_key,
                "data_fingerprint": site.data_fingerprint,
                "policy": site.policy.to_json(),
            }
        )
        content = RecordDict({codec.SITE_RECORD: record})
        keys = _first_secagg_keys(msg, context)
        if keys is not None:
            content[keys[0]] = keys[1]
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        return _train_reply(site, msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        config = _config(msg, codec.CONFIG_RECORD)
        layout = codec.ModelLayout.from_json(str(config["layout"]))
        flat = codec.decode_flat(_global_model(msg))
        res = site.trainer.evaluate(layout.unflatten(flat), config)
        metrics = MetricRecord({"loss": res.loss, codec.NUM_EXAMPLES_KEY: res.num_examples, **res.metrics})
        return Message(RecordDict({codec.METRICS_RECORD: metrics}), reply_to=msg)

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
            return LocalUpdate(delta=clipped, weight=1.0, metrics=metrics)
        return LocalUpdate(delta=delta, weight=float(num_examples), metrics=metrics)

    register_secagg(app, fit_update)
    return app


def local_delta(site: Site, msg: Message, config: Mapping[str, Any]) -> tuple[np.ndarray, int, dict[str, float]]:
    """Train on the message's global model; return (flat float32 delta, examples, metrics)."""
    layout = codec.ModelLayout.from_json(str(config["layout"]))
    global_flat = codec.decode_flat(
        _global_model(msg), expected_size=layout.size
    )
    fit = site.trainer.fit(layout.unflatten(global_flat), config)
    delta = layout.flatten(fit.weights) - global_flat
    return delta.astype(np.float32, copy=False), int(fit.num_examples), dict(fit.metrics)


def _site_side_clip(delta: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Clip the update at the site when the round asks for site-side DP clipping."""
    if str(config.get("dp_where", "")) != "site":
        return delta
    from fedsilo.privacy.dp import clip_update

    clipped, _norm, _was_clipped = clip_update(delta, float(config["dp_clip_norm"]))
    return clipped


def _train_reply(site: Site, msg: Message) -> Message:
    config = _config(msg, codec.CONFIG_RECORD)
    run_id = str(config.get("run_id", ""))
    server_round = int(config.get("server_round", 0))
    reason = site.policy.refusal(config)
    if reason is None:
        reason = _privacy_refusal(site, config)
    if reason is not None:
        if site.ledger is not None:
            site.ledger.append(
                {"run_id": run_id, "site_id": site.site_id, "round": server_round,
                 "status": "refused", "reason": reason, "time": _now_iso()}
            )
        refusal = ConfigRecord({"site_id": site.site_id, "reason": reason})
        return Message(RecordDict({codec.REFUSAL_RECORD: refusal}), reply_to=msg)

    delta, num_examples, metrics = local_delta(site, msg, config)
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
             "time": _now_iso()}
        )
    _record_privacy_participation(site, config)
    content = RecordDict(
        {
            codec.UPDATE_RECORD: ArrayRecord({codec.DELTA_KEY: codec.encode_flat(delta)}),
            codec.METRICS_RECORD: MetricRecord({codec.NUM_EXAMPLES_KEY: num_examples, **metrics}),
            codec.SITE_RECORD: ConfigRecord(
                {"site_id": site.site_id, "update_digest": digest,
                 "data_fingerprint": site.data_fingerprint, "signature": signature}
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

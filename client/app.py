"""Turn a site (a `Trainer` plus identity and policy) into a Flower `ClientApp`.

The ClientApp answers three kinds of message:

* ``query.handshake``: the site's stable id, public key, data fingerprint, policy and
  declared example count, with its signature over (run id, site id, data fingerprint,
  count) (`lineage.signing.sign_declaration`);
* ``train``: the site's update through the one update path
  (`fedsilo.client.update.site_reply`): the site's policy and its own privacy budget,
  training on the global model (the Trainer's result checked against the global model's
  layout and the declared count), DP clipping when the round asks for it, then the flat
  model delta with its digest, the layout it was flattened with and the site's signature
  over (run id, round, update digest, data fingerprint) (`fedsilo.common.protocol.
  TrainReply`), recorded in the site's ledger. A refusal is a normal reply with the
  reason (`Refusal`), recorded in the site's ledger and, by the server, in lineage. Under
  SecAgg+ the same path runs at the masked stage, with masking as its encoding
  (`fedsilo.client.secagg_handler`);
* ``evaluate``: score the global model on the site's own held-out split, signed over
  (run id, round, model digest, loss, metrics, count) (`fedsilo.client.evaluation`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsilo import lineage
from fedsilo.client import run_state
from fedsilo.client.app_code import app_digest_field
from fedsilo.client.policy import SitePolicy
from fedsilo.client.trainer import DeclaresExamples, Trainer
from fedsilo.client.update import (  # noqa: F401 - ContributionError, local_delta: public here too
    ContributionError,
    LocalUpdate,
    global_model,
    local_delta,
    plain_encoder,
    site_reply,
    train_update,
)
from fedsilo.common import codec
from fedsilo.common.protocol import SECAGG_ERROR_CODE, Refusal, RoundConfig, TrainReply
from fedsilo.lineage.signing import sign_declaration
from fedsilo.privacy.screening import example_count
from fedsilo.tasks.statistics import (
    STATISTICS_KEY,
    STATISTICS_RECORD,
    decode_statistics,
    encode_statistics,
)


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
    profile_fn : the site's data profile for the run's drift check (`Task.data_profile`),
        sent when the server asks for it: in the handshake reply, or under SecAgg+ only
        summed with the other sites' (as federated statistics).
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
    profile_fn: Callable[[], Mapping[str, np.ndarray] | None] | None = None
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

    def profile(self, federation: Mapping[str, Any], how: str) -> dict[str, np.ndarray] | None:
        """The site's data profile when the server asks for it ``how`` (``profile`` in the
        federation record: ``handshake`` or ``secure``), else None."""
        if federation.get("profile") != how or self.profile_fn is None:
            return None
        if how == "handshake" and (not self.policy.share_profile or self.policy.require_secagg):
            return None  # the site's policy keeps its profile from the server's eyes
        profile = self.profile_fn()
        if profile is None:
            return None
        if federation.get("profile_record_noise") is not None:  # a record-level DP release
            return self._noised(profile, float(federation["profile_record_noise"]))
        if federation.get("profile_form") == "frequencies":  # a client-level DP release
            from fedsilo.tasks.profile import frequency_profile

            return frequency_profile(profile)
        return dict(profile)

    def _noised(self, profile: Mapping[str, np.ndarray], z: float) -> dict[str, np.ndarray]:
        """``profile`` with the site's own Gaussian noise (CSPRNG), the release counted in
        ``state["record_releases"]`` for its DP-SGD accountant (`fedsilo.client.run_state`
        keeps it across messages)."""
        from fedsilo.governance.profile_names import NOISE
        from fedsilo.privacy.noise import GaussianNoise
        from fedsilo.privacy.profile_release import local_release

        noisy, variance = local_release(profile, z, GaussianNoise(secure=True).normal)
        # one release a run: the handshake's profile, or (SecAgg+) the masked stage's
        self.state["record_releases"] = [z]
        return {**noisy, NOISE: np.array([variance])}

    def statistics_with_profile(self, federation: Mapping[str, Any]
                                ) -> Mapping[str, np.ndarray] | None:
        """The task's statistics, plus the data profile when it is summed under SecAgg+."""
        stats = self.statistics_fn() if self.statistics_fn is not None else None
        profile = self.profile(federation, "secure")
        if profile is None:
            return stats
        return {**(stats or {}), **profile}

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


def _round(msg: Message) -> RoundConfig:
    """The message's round config (`RoundConfig`; empty if it carries none)."""
    return RoundConfig.from_record(_config(msg, codec.CONFIG_RECORD))


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
                **_profile_field(site, federation),
            }
        )
        run_state.keep(site, context, releases_only=True)  # a record-level DP profile
        content = RecordDict({codec.SITE_RECORD: record})
        keys = _first_secagg_keys(msg, context)
        if keys is not None:
            content[keys[0]] = keys[1]
        return Message(content, reply_to=msg)

    @app.query("statistics")
    def statistics(msg: Message, context: Context) -> Message:
        # under SecAgg+ (the run's, or the site's policy) only the sums' layout, never
        # their values, is sent in clear (`fedsilo.client.secagg_statistics`)
        from fedsilo.client.secagg_statistics import statistics_reply
        from fedsilo.tasks.statistics import StatisticsError

        federation = _config(msg, codec.FEDERATION_RECORD)
        site = site_factory(context, federation)
        stats = site.statistics_with_profile(federation)
        try:
            content = statistics_reply(site.site_id, stats, federation,
                                       site.policy.require_secagg)
        except StatisticsError as exc:
            return Message(Error(SECAGG_ERROR_CODE, str(exc)), reply_to=msg)
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        site = run_state.restore(site, msg, context)  # its budget outlives the process
        reply = _train_reply(site, msg)
        run_state.keep(site, context)
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        # the site scores the global model on its own held-out split and signs the score
        from fedsilo.client.evaluation import evaluation_content

        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD)).apply_statistics(msg)
        config = _config(msg, codec.CONFIG_RECORD)
        layout = codec.ModelLayout.from_json(str(config["layout"]))
        flat = codec.decode_flat(global_model(msg), expected_size=layout.size)
        return Message(evaluation_content(site, layout.unflatten(flat), config), reply_to=msg)

    try:  # secure aggregation stages, when that module is present
        from fedsilo.client.secagg_handler import register_secagg
    except ImportError:  # pragma: no cover - only while secagg is being built
        return app

    def fit_update(msg: Message, context: Context) -> LocalUpdate | Refusal:
        # the masked stage's training step; the handler encodes it through `site_reply`
        site = site_factory(context, _config(msg, codec.FEDERATION_RECORD))
        site = run_state.restore(site, msg, context)
        update = train_update(site, msg, _round(msg), secure=True)
        run_state.keep(site, context)
        return update

    def identify(msg: Message, context: Context) -> Site:
        # the site signs its masked input and unmask reply with its key, as a plain update
        return site_factory(context, _config(msg, codec.FEDERATION_RECORD))

    register_secagg(app, fit_update, identify)

    def site_statistics(msg: Message, context: Context) -> Mapping[str, np.ndarray] | None:
        # the statistics' SecAgg+ exchange: the site's sums are its masked input
        federation = _config(msg, codec.FEDERATION_RECORD)
        site = site_factory(context, federation)
        stats = site.statistics_with_profile(federation)
        run_state.keep(site, context, releases_only=True)
        return stats

    from fedsilo.client.secagg_statistics import register_secure_statistics

    register_secure_statistics(app, site_statistics)
    return app


def _profile_field(site: Site, federation: Mapping[str, Any]) -> dict[str, str]:
    """The handshake's ``data_profile`` (JSON of the profile's arrays) when the server asks
    for it there; a profile that cannot be computed is left out (the server notes it)."""
    try:
        profile = site.profile(federation, "handshake")
    except Exception:  # noqa: BLE001 - user code: a missing profile only skips the check
        return {}
    return {} if profile is None else {"data_profile": encode_statistics(profile)}


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


def _train_reply(site: Site, msg: Message) -> Message:
    """A plain round's reply: the site's update (`site_reply`, plain encoding) as a
    `TrainReply`, or its `Refusal`."""
    cfg = _round(msg)
    out = site_reply(site, cfg, lambda: train_update(site, msg, cfg), plain_encoder)
    if isinstance(out, Refusal):
        return Message(out.to_record(), reply_to=msg)
    reply = TrainReply(
        site_id=site.site_id, update=out.payload, num_examples=out.num_examples,
        metrics=out.metrics, update_digest=out.digest,
        data_fingerprint=site.data_fingerprint, signature=out.signature,
        layout=str(cfg.sent_layout))
    return Message(reply.to_record(), reply_to=msg)

"""Site side of SecAgg+ on Flower's Message API.

`register_secagg` adds four train actions to a ClientApp, one per protocol stage
(message types ``train.secagg_setup``, ``train.secagg_share``, ``train.secagg_masked``,
``train.secagg_unmask``). The protocol state of the node lives in ``context.state``
between messages. At the masked stage the message also carries the server's normal
training content; the site's ``fit_update`` trains and returns the update to mask.

The next round rides on this one's messages, so that a round needs fewer exchanges:

- a masked-input request may carry the next round's setup request: the site answers with
  its masked input and its fresh public keys for the next round, and keeps that round's
  setup state next to this round's (under ``NEXT_STATE_KEY``);
- the unmask request may then carry the site's share request of the next round: the site
  answers with its unmask reply and its encrypted shares for the next round, whose state
  becomes the node's state. The next round starts at the masked stage for it (two
  exchanges per round instead of four). Without a share request, the next round's setup
  state becomes the node's state and that round starts at the share stage.

At the masked stage the site's update goes through the one update path
(`fedsilo.client.update.site_reply`, with the masking as its encoding; see
`fedsilo.client.secagg_site`): with ``identify`` (the site: its id, Ed25519 key, data
fingerprint and ledger), the site signs the digest of the exact masked uint32 vector
(`fedsilo.lineage.update_digest`) with its data fingerprint, as it signs a plain update,
and its ledger gets a ``sent`` entry (with its real example count); at the unmask stage it
signs the digest of its unmask reply (`fedsilo.lineage.signing.unmask_digest`), recorded as
an ``unmasked`` entry. The signatures travel under ``ATTEST_KEY``, so ``fedsilo lineage
reconcile`` works under SecAgg+ too. A site that refuses the round (``fit_update`` returns
a `fedsilo.common.protocol.Refusal`: its policy, its budget, an update it cannot send)
records the refusal in its ledger and answers with `Refusal.to_error`: the server takes it
as the site leaving the round, with the reason. Its state for the round is dropped, as it
is for any stage that fails.

A problem with the next round's part only costs that round: it is logged and left out of
the reply, and this round's reply stands. The run's handshake query may carry the first
round's setup request in the same way (`advertise_first_keys`). If the server asks again
for a round's keys (it lost them, or its sample changed), the site advertises fresh ones
as long as it has not masked its input with the first pair; once it has, the round is
claimed and a new setup is refused.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedsilo.client.secagg_site import (
    SIGNER_KEY,
    FitUpdate,
    Identify,
    Refused,
    masked_stage,
    signed_unmask,
)
from fedsilo.client.update import LocalUpdate, SiteSigner
from fedsilo.common.protocol import SECAGG_ERROR_CODE
from fedsilo.privacy.secagg import SecAggClient, SecAggClientError
from fedsilo.privacy.secagg.client import forget_keys
from fedsilo.privacy.secagg.messages import (
    KeyAdvert,
    SetupRequest,
    ShareReply,
)
from fedsilo.privacy.secagg.records import (
    ATTEST_KEY,
    MESSAGE_TYPES,
    NEXT_KEY,
    RECORD_KEY,
    decode_next_setup,
    decode_next_share,
    decode_request,
    encode,
    request_round,
)

STATE_KEY = "secagg_state"
NEXT_STATE_KEY = "secagg_next_state"  # the next round's state, set up during this round
ROUNDS_KEY = "secagg_rounds"  # run id -> last round this node set up (replay protection)
METRICS_KEY = "metrics"
log = logging.getLogger(__name__)
__all__ = ["SECAGG_ERROR_CODE", "SIGNER_KEY", "FitUpdate", "Identify", "LocalUpdate", "SiteSigner",
           "advertise_first_keys", "register_secagg"]

# node id -> (the state blob last saved, the client object it was dumped from). The
# context's blob stays the source of truth: the object is reused only while the context
# still holds that very blob (same object, so unchanged), and the entry is taken out when
# used, so a stage that fails half-way never leaves a modified object behind.
_LIVE: dict[int, tuple[bytes, SecAggClient]] = {}
_LIVE_NEXT: dict[int, tuple[bytes, SecAggClient]] = {}  # the same for the next round's state


def _object(cache: dict[int, tuple[bytes, SecAggClient]], node: int, blob: object
            ) -> SecAggClient:
    """The client object of state ``blob``: the cached one if it was dumped to that very
    blob (the entry is taken out either way), else parsed from the blob."""
    live = cache.pop(node, None)
    return live[1] if live is not None and live[0] is blob else SecAggClient.load(blob)  # type: ignore[arg-type]


class _OtherRound(SecAggClientError):
    """A request for another round than the node's state is in. It is refused, but the
    state is kept: it belongs to a round still under way (e.g. the next round's, which
    the unmask reply shared, when the unmask request arrives a second time)."""


def _promote_next(context: Context, server_round: int) -> bool:
    """Make the next round's state (set up during the previous round) the node's state,
    if it is for ``server_round``; True if it was."""
    nxt = context.state.get(NEXT_STATE_KEY)
    if not isinstance(nxt, ConfigRecord) or nxt.get("round") != server_round:
        return False
    context.state[STATE_KEY] = ConfigRecord({"blob": nxt["blob"]})
    context.state.pop(NEXT_STATE_KEY)
    node = int(context.node_id)
    live = _LIVE_NEXT.pop(node, None)
    if live is not None:
        _LIVE[node] = live  # same blob object, now the node's state
    return True


def _load(context: Context, server_round: int) -> SecAggClient:
    # a node that missed the unmask request of the round before still holds this round's
    # setup state as the next round's
    _promote_next(context, server_round)
    rec = context.state.get(STATE_KEY)
    if not isinstance(rec, ConfigRecord) or "blob" not in rec:
        _LIVE.pop(int(context.node_id), None)
        raise SecAggClientError(f"secagg: node {context.node_id} has no protocol state "
                                f"for round {server_round} (setup message missed?)")
    # reuse the object only if the state was saved from it and not replaced since
    client = _object(_LIVE, int(context.node_id), rec["blob"])
    if client.st.get("round") != server_round:
        raise _OtherRound(f"secagg: node {context.node_id} state is for round "
                          f"{client.st.get('round')}, message is for round {server_round}")
    return client


def _not_yet_masked(context: Context, run_id: str, server_round: int) -> bool:
    """True if the node's state for this very round (its state, or the next round's kept
    beside it) has not reached the masked stage: keys advertised, perhaps shares sent,
    but no masked input."""
    for key in (STATE_KEY, NEXT_STATE_KEY):
        rec = context.state.get(key)
        if not isinstance(rec, ConfigRecord) or "blob" not in rec:
            continue
        try:
            st = SecAggClient.load(rec["blob"]).st  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError):
            continue
        if (st.get("run_id"), st.get("round")) == (run_id, server_round):
            return st.get("stage") in ("setup", "share")
    return False


def _claim_round(context: Context, run_id: str, server_round: int) -> None:
    """Refuse to set up a round twice once it has masked: a replayed round would mask the
    same update twice with fresh secrets, letting a server collect seed shares in one run
    and key shares in the other.

    A round that has not reached its masked stage (keys advertised, perhaps shares sent
    ahead of it) can be set up again, e.g. by a server that restarted and lost it: new
    keys and a new seed replace the old ones. The old secrets never masked anything, so
    whatever a server learns of them (at most their shares) reveals nothing of the update.
    """
    rec = context.state.get(ROUNDS_KEY)
    seen = dict(rec) if isinstance(rec, ConfigRecord) else {}
    last = seen.get(run_id)
    if isinstance(last, int) and (server_round < last or server_round == last and not
                                  _not_yet_masked(context, run_id, server_round)):
        raise SecAggClientError(f"secagg: node {context.node_id} already took part in round "
                                f"{last} of run {run_id!r}; refusing round {server_round}")
    seen[run_id] = server_round
    context.state[ROUNDS_KEY] = ConfigRecord(seen)  # type: ignore[arg-type]


def _set_up(context: Context, req: SetupRequest) -> tuple[SecAggClient, KeyAdvert]:
    """Fresh keys for round ``req.server_round``, which this claims (`_claim_round`).

    The request passes the site's checks (`SecAggClient.setup`) before the round is
    claimed: a refused request claims nothing, so a correct setup for the same round can
    still follow it.
    """
    node = int(context.node_id)
    client = SecAggClient(node)
    advert = client.setup(req)
    try:
        _claim_round(context, req.run_id, req.server_round)
    except SecAggClientError:
        forget_keys(node)  # the keys just made are never used
        raise
    return client, advert


def _save(context: Context, client: SecAggClient) -> None:
    blob = client.dump()
    context.state[STATE_KEY] = ConfigRecord({"blob": blob})
    _LIVE[int(context.node_id)] = (blob, client)
    nxt = context.state.get(NEXT_STATE_KEY)
    nxt_round = nxt.get("round") if isinstance(nxt, ConfigRecord) else None
    if isinstance(nxt_round, int) and nxt_round <= client.st.get("round", 0):
        context.state.pop(NEXT_STATE_KEY)  # superseded (e.g. that round was set up again)
        _LIVE_NEXT.pop(int(context.node_id), None)


def _save_next(context: Context, client: SecAggClient) -> None:
    """Keep the next round's setup state beside this round's, until this round's unmask."""
    blob = client.dump()
    context.state[NEXT_STATE_KEY] = ConfigRecord({"blob": blob, "round": client.st["round"]})
    _LIVE_NEXT[int(context.node_id)] = (blob, client)


def _setup_next(message: Message, context: Context, run_id: str, server_round: int | None
                ) -> tuple[SecAggClient, KeyAdvert] | None:
    """Answer a setup request riding on another message (``NEXT_KEY``), if there is one.

    The request must be for run ``run_id`` and, unless None, round ``server_round``. Any
    problem only costs the shortcut: it is logged, no keys are advertised, and the
    server falls back to a setup message.
    """
    node = int(context.node_id)
    try:
        req = decode_next_setup(message.content)
        if req is None:
            return None
        if req.run_id != run_id or server_round not in (None, req.server_round):
            raise SecAggClientError(f"secagg: node {node}: setup is for round "
                                    f"{req.server_round} of run {req.run_id!r}, expected "
                                    f"round {server_round} of run {run_id!r}")
        return _set_up(context, req)
    except (SecAggClientError, ValueError) as e:
        log.warning("secagg: not advertising keys ahead of the round: %s", e)
        return None


def _share_next(message: Message, context: Context, run_id: str, server_round: int
                ) -> tuple[SecAggClient, ShareReply] | None:
    """Answer the next round's share request riding on an unmask request, if there is one.

    It is answered from the setup state kept since this round's masked stage
    (``NEXT_STATE_KEY``). Any problem costs the site only round ``server_round``: it is
    logged, that round's state is dropped and no shares are sent (the server counts the
    site as dropped at that round's share stage); the unmask reply stands.
    """
    node = int(context.node_id)
    try:
        req = decode_next_share(message.content, server_round)
        if req is None:
            return None
        rec = context.state.get(NEXT_STATE_KEY)
        if not isinstance(rec, ConfigRecord) or rec.get("round") != server_round:
            raise SecAggClientError(f"secagg: node {node} has no setup state for round "
                                    f"{server_round}")
        client = _object(_LIVE_NEXT, node, rec["blob"])
        if client.st.get("run_id") != run_id:
            raise SecAggClientError(f"secagg: node {node}: share request is for run "
                                    f"{run_id!r}, its setup for run {client.st.get('run_id')!r}")
        return client, client.share(req)
    except (SecAggClientError, ValueError) as e:
        log.warning("secagg: not sharing ahead of round %s: %s", server_round, e)
        context.state.pop(NEXT_STATE_KEY, None)  # a refused round is over for this site
        _LIVE_NEXT.pop(node, None)
        forget_keys(node)
        return None


def advertise_first_keys(message: Message, context: Context, run_id: str) -> ConfigRecord | None:
    """Keys for the run's first secure round, if the handshake ``message`` asks for them.

    The server may attach that round's setup request to its handshake query (under
    ``NEXT_KEY``); the site then generates the round's key pairs, keeps the setup state
    and returns the record of its key advertisement for the handshake reply, so the first
    round needs no setup message either. None if not asked, or if the request is refused
    (wrong run, a round already claimed: logged).
    """
    nxt = _setup_next(message, context, run_id, None)
    if nxt is None:
        return None
    client, advert = nxt
    _save(context, client)
    return encode(advert, client.st["round"])[RECORD_KEY]  # type: ignore[return-value]


def _forget_round(context: Context) -> None:
    """The round is over for this site: drop its protocol state and its keys."""
    context.state.pop(STATE_KEY, None)
    _LIVE.pop(int(context.node_id), None)
    forget_keys(int(context.node_id))


def _handle(stage: str, message: Message, context: Context, fit_update: FitUpdate,
            identify: Identify | None = None) -> Message:
    ahead: tuple[SecAggClient, object] | None = None  # the next round's state and reply
    attest: ConfigRecord | None = None  # what the site signed of its reply
    try:
        rnd = request_round(message.content)
        req = decode_request(stage, message.content)
        if stage == "setup":
            client, advert = _set_up(context, req)  # type: ignore[arg-type]
            reply: object = advert
            metrics: dict[str, float] = {}
        else:
            client = _load(context, rnd)
            metrics = {}
            if stage == "share":
                reply = client.share(req)  # type: ignore[arg-type]
            elif stage == "masked":
                reply, metrics, attest = masked_stage(client, req, message, context, fit_update,
                                                 identify)
                ahead = _setup_next(message, context, client.st["run_id"], rnd + 1)
            else:
                reply = client.unmask(req)  # type: ignore[arg-type]
                attest = signed_unmask(client, reply, message, context, identify)
                ahead = _share_next(message, context, client.st["run_id"], rnd + 1)
    except (SecAggClientError, ValueError) as e:
        if not isinstance(e, _OtherRound):
            _forget_round(context)  # a refused round is over for this site
        error = e.refusal.to_error() if isinstance(e, Refused) else Error(SECAGG_ERROR_CODE, str(e))
        return Message(error, reply_to=message)
    except Exception:
        _forget_round(context)  # e.g. the site's training crashed: no half-done state left
        raise
    if stage != "unmask":
        _save(context, client)
        if ahead is not None:
            _save_next(context, ahead[0])
    # This round is over: the next round's state replaces it (the finished round's only
    # remaining job, refusing a replayed request, the round check in `_load` takes over).
    elif ahead is not None:
        _save(context, ahead[0])
    elif not _promote_next(context, rnd + 1):
        _save(context, client)
    content = encode(reply, rnd)
    if ahead is not None:
        content[NEXT_KEY] = encode(ahead[1], rnd + 1)[RECORD_KEY]
    if attest is not None:
        content[ATTEST_KEY] = attest
    if metrics:
        content[METRICS_KEY] = MetricRecord(metrics)  # type: ignore[arg-type]
    return Message(content, reply_to=message)


def register_secagg(app: ClientApp, fit_update: FitUpdate,
                    identify: Identify | None = None) -> None:
    """Register the four SecAgg+ train actions on ``app``.

    Parameters
    ----------
    app:
        The site's ClientApp.
    fit_update:
        Called at the masked stage with the message (carrying the server's training
        content: the global model and the round config) and the context; returns the
        site's `LocalUpdate` to be masked, or its `fedsilo.common.protocol.Refusal`
        (recorded in the site's ledger and answered with `Refusal.to_error`).
    identify:
        Called at the masked stage with the message and the context (and at the unmask
        stage if the site's key did not come from a key file, see
        `fedsilo.client.secagg_signer`);
        returns the site (`SiteSigner`: id, Ed25519 key, data fingerprint, ledger). The site then
        signs the digest of its masked vector (as it signs a plain update) and of its
        unmask reply, sends the signatures under ``ATTEST_KEY`` and records both in its
        ledger. None (or a site without a key): the replies are unsigned.
    """
    for stage, mtype in MESSAGE_TYPES.items():
        action = mtype.split(".", 1)[1]

        def fn(message: Message, context: Context, stage: str = stage) -> Message:
            return _handle(stage, message, context, fit_update, identify)

        app.train(action)(fn)

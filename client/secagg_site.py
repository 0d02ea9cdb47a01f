"""The site's own part of a SecAgg+ round: its update, its signatures, its key and ledger.

`masked_stage` sends the site's update through the one update path
(`fedsilo.client.update.site_reply`, with the masking as its encoder): the site trains (or
refuses, `Refused`), masks, signs the digest of exactly the masked vector sent and records
it in its ledger. `signed_unmask` signs (and records) the site's unmask reply.

Between the two, the site's signing key and ledger must be found again.

On Flower's deployment runtime every message runs in a fresh ClientApp process: building
the site again there (its trainer, its data) only to sign the unmask reply took seconds.
At the masked stage the handler notes in the node's state where the site's key and
ledger files are (`remember_signer`: paths only, no secret); the unmask stage reloads
just those (`recall_signer`). A site whose key did not come from a file is asked again
(the handler's ``identify``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from fedsilo import lineage
from fedsilo.client.update import LocalUpdate, SiteSigner, site_reply
from fedsilo.common.protocol import Refusal, RoundConfig
from fedsilo.lineage.keys import key_file
from fedsilo.lineage.signing import sign_unmask, unmask_digest
from fedsilo.privacy.secagg import SecAggClient, SecAggClientError
from fedsilo.privacy.secagg.messages import MaskedReply, UnmaskReply
from fedsilo.privacy.secagg.records import MASKED_DTYPE

SIGNER_KEY = "secagg_signer"
"""Key of the node state's record naming the site's key and ledger files."""
log = logging.getLogger("fedsilo.client.secagg_handler")

FitUpdate = Callable[[Message, Context], "LocalUpdate | Refusal"]
"""The site's training step at the masked stage: its update, or its refusal."""
Identify = Callable[[Message, Context], "SiteSigner | None"]


class Refused(SecAggClientError):
    """The site refuses the round at its masked stage (its policy, its budget, an update
    it cannot send): the round is over for it, and it answers with `Refusal.to_error`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


@dataclass
class RecalledSigner:
    """A site's signing identity rebuilt from `SIGNER_KEY` (key and ledger files)."""

    site_id: str
    key: Any
    ledger: Any
    data_fingerprint: str = ""


def remember_signer(context: Context, site: SiteSigner, run_id: str, rnd: int) -> None:
    """Note where ``site``'s key and ledger live, for its unmask stage of round ``rnd``
    of run ``run_id`` (nothing, and any older note dropped, if its key has no file)."""
    path = key_file(site.key)
    if path is None:
        context.state.pop(SIGNER_KEY, None)
        return
    ledger = getattr(site.ledger, "path", None)
    context.state[SIGNER_KEY] = ConfigRecord({
        "run_id": run_id, "round": rnd, "site_id": site.site_id, "key": str(path),
        "ledger": "" if ledger is None else str(ledger),
        "fsync": bool(getattr(site.ledger, "fsync", True))})


def recall_signer(context: Context, run_id: str, rnd: int) -> SiteSigner | None:
    """The signing identity `remember_signer` noted for this round, if its key file is
    still there (the note is taken out of the state either way)."""
    rec = context.state.pop(SIGNER_KEY, None)
    if not isinstance(rec, ConfigRecord) or (rec.get("run_id"), rec.get("round")) != (run_id, rnd):
        return None
    path = Path(str(rec["key"]))
    if not path.is_file():
        return None
    try:
        key = lineage.load_or_create_key(path)
    except lineage.LineageError:
        return None
    ledger = lineage.SiteLedger(Path(str(rec["ledger"])), fsync=bool(rec["fsync"])) \
        if rec["ledger"] else None
    return RecalledSigner(str(rec["site_id"]), key, ledger)


def masked_stage(client: SecAggClient, req: object, message: Message, context: Context,
            fit_update: FitUpdate, identify: Identify | None
            ) -> tuple[MaskedReply, dict[str, float], ConfigRecord | None]:
    """The masked stage: the site's update through the one update path (`site_reply`:
    train, mask, sign and record in the site's ledger exactly the masked vector sent).
    `Refused` if the site refuses the round (recorded in its ledger first)."""
    site = identify(message, context) if identify is not None else None  # before any change
    run_id, rnd = client.st["run_id"], client.st["round"]

    def mask(delta: np.ndarray, weight: float) -> tuple[str, MaskedReply]:
        reply = client.masked_input(req, delta, weight)  # type: ignore[arg-type]
        return lineage.update_digest(np.asarray(reply.masked, dtype=MASKED_DTYPE)), reply

    out = site_reply(site, RoundConfig(run_id=run_id, server_round=rnd),
                     lambda: fit_update(message, context), mask, secagg=True)
    if isinstance(out, Refusal):
        raise Refused(out)
    if client.st.get("clipped"):
        log.warning("secagg: %d update coordinates clipped to +-%s",
                    client.st["clipped"], client.st["config"]["clip_range"])
    attest = None
    if site is not None and site.key is not None:
        attest = ConfigRecord({"digest": out.digest, "signature": out.signature,
                               "data_fingerprint": site.data_fingerprint})
        remember_signer(context, site, run_id, rnd)
    return out.payload, out.metrics, attest


def signed_unmask(client: SecAggClient, reply: UnmaskReply, message: Message,
                   context: Context, identify: Identify | None) -> ConfigRecord | None:
    """The site's signature over the unmask reply (the shares it reveals), recorded in its
    ledger; None for a site without a key."""
    if identify is None:
        return None
    run_id, rnd = client.st["run_id"], client.st["round"]
    site = recall_signer(context, run_id, rnd) or identify(message, context)
    if site is None or site.key is None:
        return None
    digest = unmask_digest(reply.b_owners, reply.b_shares, reply.sk_owners, reply.sk_shares)
    signature = sign_unmask(site.key, run_id, rnd, digest)
    if site.ledger is not None:
        site.ledger.append({"run_id": run_id, "site_id": site.site_id, "round": rnd,
                            "status": "unmasked", "unmask_digest": digest,
                            "signature": signature})
    return ConfigRecord({"digest": digest, "signature": signature})

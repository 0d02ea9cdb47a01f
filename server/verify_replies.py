"""The round's verify step: what the sites sent, checked once, into what may be aggregated.

Plain rounds (`verify_plain`): replies are put in site-id order, refusals and duplicated
replies set aside, every update decoded once into an `UpdateBatch` and screened (keys,
layout, dtype, finiteness, norm, counts bounded by the declared count:
`fedsilo.strategies.pipeline.batch_from_replies`), then each update's digest is
recomputed and the site's signature over it checked (`check_signatures`). Every site
left out gets a one-line reason.

Secure rounds: the server never sees an update, so it checks what it does see, the
signed masked input and unmask reply of each site with a key (`authenticate`, called by
the SecAgg+ driver, `fedsilo.server.secagg_round`), and states the round in the record
through `round_audit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord

from fedsilo import lineage
from fedsilo.common import codec
from fedsilo.common.codec import ModelLayout
from fedsilo.common.protocol import REFUSAL_PREFIX, Refusal
from fedsilo.lineage.fates import Fate, SecAggFate
from fedsilo.lineage.signing import unmask_digest, verify_unmask
from fedsilo.privacy.screening import ScreeningPolicy
from fedsilo.server.reply_digests import ReplyDigests
from fedsilo.server.spec import SiteInfo
from fedsilo.strategies.batch import UpdateBatch
from fedsilo.strategies.pipeline import batch_from_replies

if TYPE_CHECKING:  # the SecAgg+ modules load only when a run uses them
    from fedsilo.privacy.secagg import MaskedReply, UnmaskReply
    from fedsilo.server.secagg_round import SecAggOutcome


@dataclass
class Verified:
    """What a round's replies left to aggregate, and what the record says of each site.

    batch: the accepted updates (site-id order). replied / dropped: sampled sites that
    answered / did not. rejected: site id -> one-line reason. contributions: one per
    accepted update (digest, count, fingerprint, signature). train_loss: the
    example-weighted mean over the batch. record_epsilon: site id -> the record-level
    epsilon the site reports (asked for only under record-level DP).
    """

    batch: UpdateBatch
    replied: list[str]
    dropped: list[str]
    rejected: dict[str, str]
    contributions: list[dict[str, Any]]
    train_loss: float | None = None
    record_epsilon: dict[str, float] = field(default_factory=dict)


def verify_plain(replies: Sequence[Message], sampled: Sequence[SiteInfo], *, layout: ModelLayout,
                 policy: ScreeningPolicy, run_id: str, server_round: int,
                 record_epsilon: bool = False, digests: ReplyDigests | None = None,
                 prevs: Mapping[str, str] | None = None) -> Verified:
    """Decode, screen and check the signatures of one plain round's ``replies``
    (``digests``: their update digests, computed as they arrived; see `check_signatures`;
    ``prevs``: site id -> the attestation prev its round config carried)."""
    site_of = {s.node_id: s.site_id for s in sampled}
    # Replies arrive in completion order; aggregate in site-id order so that float
    # sums, and hence the model digest, do not depend on which site finished first.
    replies = sorted((r for r in replies if int(r.metadata.src_node_id) in site_of),
                     key=lambda r: site_of[int(r.metadata.src_node_id)])
    refused: dict[str, str] = {}
    updates = []
    for r in replies:
        refusal = None if r.has_error() else Refusal.from_record(r.content)
        if refusal is not None:  # the site's policy said no; its reason goes to lineage
            refused[site_of[int(r.metadata.src_node_id)]] = f"{REFUSAL_PREFIX}{refusal.reason}"
        else:
            updates.append(r)
    refused.update(_duplicates(updates, site_of))  # none of a node's replies is used
    updates = [r for r in updates if site_of[int(r.metadata.src_node_id)] not in refused]
    batch, rejected = batch_from_replies(
        updates, dim=layout.size, site_of=site_of, policy=policy,
        declared_examples={s.node_id: s.num_examples for s in sampled if s.num_examples},
        layout=layout,
    )
    rejected.update(refused)
    replied = sorted({site_of[int(r.metadata.src_node_id)] for r in replies})
    by_node = {s.node_id: s for s in sampled}
    contributions, keep = check_signatures(replies, batch, rejected, by_node, run_id,
                                           server_round, digests=digests, prevs=prevs)
    batch = batch.subset(keep)
    return Verified(
        batch=batch, replied=replied, dropped=sorted(set(site_of.values()) - set(replied)),
        rejected=rejected, contributions=contributions,
        train_loss=mean_metric(replies, batch, "train_loss"),
        record_epsilon=site_metric(replies, site_of, "record_epsilon") if record_epsilon else {},
    )


def check_signatures(replies: Sequence[Message], batch: UpdateBatch, rejected: dict[str, str],
                     by_node: Mapping[int, SiteInfo], run_id: str, server_round: int,
                     digests: ReplyDigests | None = None,
                     prevs: Mapping[str, str] | None = None,
                     ) -> tuple[list[dict[str, Any]], list[int]]:
    """Recompute each update's digest and check the site's signature over it: (the
    contributions of the updates that pass, their rows in ``batch``); the others go into
    ``rejected`` with the reason. ``digests`` holds the digests already computed as the
    replies arrived (`fedsilo.server.reply_digests`): the same value, off the critical
    path; an update it has none for is digested here. ``prevs``: site id -> the attestation
    prev the site was sent: its signature is over the chained message naming it (a site
    that signed the unchained one is still accepted, and recorded without ``prev``)."""
    site_rec = {}
    for r in replies:
        rec = None if r.has_error() else codec.record(r.content, codec.SITE_RECORD, ConfigRecord)
        if rec is not None:
            site_rec[int(r.metadata.src_node_id)] = rec
    contributions, keep = [], []
    for i, (node, flat) in enumerate(zip(batch.node_ids, batch.updates, strict=True)):
        info, rec = by_node[node], site_rec.get(node, {})
        digest = digests.digest_of(node, flat) if digests is not None else None
        digest = digest or lineage.update_digest(flat)
        fingerprint = str(rec.get("data_fingerprint", ""))
        signature = str(rec.get("signature", ""))
        problem = None
        if rec.get("site_id") != info.site_id:  # a reply speaking for another site
            problem = (f"site id {rec.get('site_id')!r:.80} differs from the one announced "
                       f"at the handshake ({info.site_id!r})")
        elif str(rec.get("update_digest", "")) != digest:
            problem = "update digest does not match the update received"
        elif fingerprint != info.data_fingerprint:
            problem = "data fingerprint differs from the one announced at the handshake"
        prev = (prevs or {}).get(info.site_id) if info.public_key else None
        if problem is None and info.public_key:
            problem, prev = _site_signature(info.public_key, signature, run_id, server_round,
                                            digest, fingerprint, prev)
        if problem is not None:
            rejected[info.site_id] = problem
            continue
        keep.append(i)
        contributions.append({
            "site_id": info.site_id, "update_digest": digest,
            "num_examples": int(batch.weights[i]), "data_fingerprint": fingerprint,
            "signature": signature, **({"prev": prev} if prev is not None else {}),
        })
    return contributions, keep


def _site_signature(public_key: str, signature: str, run_id: str, server_round: int,
                    digest: str, fingerprint: str, prev: str | None
                    ) -> tuple[str | None, str | None]:
    """(problem or None, the prev the signature covers): the chained message first, then
    (a site that does not chain) the unchained one."""
    if prev is not None and lineage.verify_contribution(
            public_key, signature, run_id, server_round, digest, fingerprint, prev):
        return None, prev
    if lineage.verify_contribution(public_key, signature, run_id, server_round, digest,
                                   fingerprint):
        return None, None
    return "site signature does not verify", None


def site_metric(replies: Sequence[Message], site_of: Mapping[int, str], key: str) -> dict[str, float]:
    """Site id -> the metric ``key`` each reply reports (replies without it left out)."""
    out = {}
    for r in replies:
        m = None if r.has_error() else codec.record(r.content, codec.METRICS_RECORD, MetricRecord)
        if m is not None and key in m:
            out[site_of[int(r.metadata.src_node_id)]] = float(m[key])
    return out


def mean_metric(replies: Sequence[Message], batch: UpdateBatch, key: str) -> float | None:
    """Example-weighted mean of a metric over the accepted updates only, leaving out
    values that are not finite numbers: no reply's metrics (a NaN loss, a rejected
    reply's count of 1e39) can make the round record unwritable."""
    weight_of = dict(zip(batch.node_ids, batch.weights.tolist(), strict=True))
    vals, weights = [], []
    for r in replies:
        node = int(r.metadata.src_node_id)
        m = None if r.has_error() else codec.record(r.content, codec.METRICS_RECORD, MetricRecord)
        if m is None or node not in weight_of:
            continue
        value = _finite_number(m.get(key))
        if value is not None:
            vals.append(value)
            weights.append(weight_of[node])
    if not vals or sum(weights) <= 0:
        return None
    mean = float(np.average(vals, weights=weights))
    return mean if np.isfinite(mean) else None


def _finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite int or float (a site's metric), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        out = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return out if np.isfinite(out) else None


def _duplicates(replies: Sequence[Message], site_of: Mapping[int, str]) -> dict[str, str]:
    """Sites with more than one reply in the round (a replayed or duplicated message), with
    the reason none of their replies is used: which one to trust cannot be told."""
    counts: dict[int, int] = {}
    for r in replies:
        node = int(r.metadata.src_node_id)
        counts[node] = counts.get(node, 0) + 1
    return {site_of[node]: f"{k} replies in one round (replayed or duplicated); none used"
            for node, k in counts.items() if k > 1}


# ----------------------------------------------------------------- secure rounds
@dataclass(frozen=True)
class Signer:
    """What the run's handshake told the server about a site, to check what it signs.

    public_key: the site's Ed25519 public key (64 hex); "" for a site without a key (its
        replies are then not checked, and it has no attested contribution).
    data_fingerprint: the data fingerprint the site announced.
    """

    public_key: str
    data_fingerprint: str


def _attest_masked(reply: MaskedReply, rec: object, signer: Signer, run_id: str,
                   server_round: int) -> tuple[str | None, dict[str, str]]:
    """(why the masked input is refused, or None; what it attests)."""
    if not isinstance(rec, ConfigRecord):
        return "masked input is not signed (no site signature record)", {}
    digest = lineage.update_digest(reply.masked)
    fingerprint, signature = rec.get("data_fingerprint"), rec.get("signature")
    if rec.get("digest") != digest:
        return "masked input digest does not match the masked vector received", {}
    if fingerprint != signer.data_fingerprint:
        return "data fingerprint differs from the one announced at the handshake", {}
    if not isinstance(signature, str) or not lineage.verify_contribution(
            signer.public_key, signature, run_id, server_round, digest, fingerprint):
        return "site signature does not verify", {}
    return None, {"update_digest": digest, "signature": signature,
                  "data_fingerprint": str(fingerprint)}


def _attest_unmask(reply: UnmaskReply, rec: object, signer: Signer, run_id: str,
                   server_round: int) -> tuple[str | None, dict[str, str]]:
    """(why the unmask reply is refused, or None; what it attests)."""
    if not isinstance(rec, ConfigRecord):
        return "unmask reply is not signed (no site signature record)", {}
    try:
        digest = unmask_digest([int(o) for o in reply.b_owners], list(reply.b_shares),
                               [int(o) for o in reply.sk_owners], list(reply.sk_shares))
    except (TypeError, ValueError) as e:
        return f"malformed reply: {e}", {}
    signature = rec.get("signature")
    if rec.get("digest") != digest:
        return "unmask reply digest does not match the shares received", {}
    if not isinstance(signature, str) or not verify_unmask(
            signer.public_key, signature, run_id, server_round, digest):
        return "site signature of the unmask reply does not verify", {}
    return None, {"unmask_digest": digest, "unmask_signature": signature}


def authenticate(stage: str, replies: dict[int, object], messages: list[Message],
                 signers: Mapping[int, Signer] | None, run_id: str, server_round: int,
                 attested: dict[int, dict[str, str]]) -> None:
    """Check the site signature on each masked-input / unmask reply of a site with a key.

    A reply whose signature is missing or does not verify becomes `Rejected` (the site
    is excluded as a dropout would be, with the reason); what verified goes into
    ``attested`` (node id -> fields for lineage).
    """
    if signers is None:
        return
    from fedsilo.privacy.secagg import MaskedReply, UnmaskReply
    from fedsilo.privacy.secagg.messages import Rejected
    from fedsilo.privacy.secagg.records import ATTEST_KEY

    kind: type = MaskedReply if stage == "masked" else UnmaskReply
    check: Callable[..., tuple[str | None, dict[str, str]]] = (
        _attest_masked if stage == "masked" else _attest_unmask)
    content = {int(m.metadata.src_node_id): m.content for m in messages}
    for n, reply in replies.items():
        signer = signers.get(n)
        if not isinstance(reply, kind) or signer is None or not signer.public_key:
            continue
        rec = content[n].get(ATTEST_KEY) if n in content else None
        problem, fields = check(reply, rec, signer, run_id, server_round)
        if problem is not None:
            replies[n] = Rejected(problem)
        elif stage == "masked":
            attested[n] = fields
        elif n in attested:
            attested[n].update(fields)


@dataclass
class RoundAudit:
    """A secure round as the round record states it (site ids, not node ids).

    replied / dropped / rejected / accepted: as in a plain round; a site excluded with a
        reason (its refusal, a malformed reply, a signature that does not verify...) and
        not in the sum is rejected with that reason, a site that went silent is dropped.
    contributions: one per site whose masked input's signature verified: the masked
        vector's digest, the site's signature over it, its data fingerprint; the example
        count stays secret (null). ``detail.secagg`` holds the site's fate and, when its
        unmask reply's signature verified, that reply's digest and signature.
    secagg: the protocol's lineage plus ``participant_sites``, ``recovered_sites`` and
        ``site_fates`` (site id -> ``in_sum``, ``recovered``, ``dropped`` or ``aborted``).
    """

    replied: list[str]
    dropped: list[str]
    rejected: dict[str, str]
    accepted: list[str]
    contributions: list[dict[str, Any]]
    secagg: dict[str, Any]


def _fate(n: int, out: SecAggOutcome, left: set[int]) -> SecAggFate:
    if n in out.participants:
        return SecAggFate.IN_SUM
    if n in out.recovered:
        return SecAggFate.RECOVERED
    return SecAggFate.ABORTED if not out.ok and n not in left else SecAggFate.DROPPED


def _as_refusal(reason: str) -> str:
    """A site's refusal inside a SecAgg+ stage (`protocol.Refusal.to_error`) reads as in a
    plain round (``refused by site: <reason>``, what the site's ledger reconciles with);
    any other exclusion keeps its stage prefix."""
    _, refused, why = reason.partition(REFUSAL_PREFIX)
    return f"{REFUSAL_PREFIX}{why}" if refused else reason


def round_audit(out: SecAggOutcome, site_of: Mapping[int, str]) -> RoundAudit:
    """The round record's fields for ``out`` (``site_of``: node id -> site id, the sample)."""
    left = {n for nodes in out.dropped.values() for n in nodes}
    excluded = out.lineage.get("excluded", {})
    fates = {n: _fate(n, out, left) for n in site_of}
    rejected = {site_of[n]: _as_refusal(excluded[str(n)]) for n in site_of
                if fates[n] != SecAggFate.IN_SUM and str(n) in excluded}
    dropped = sorted(site_of[n] for n in site_of
                     if fates[n] != SecAggFate.IN_SUM and n in left and str(n) not in excluded)
    contributions = []
    for n in sorted(out.attestations, key=lambda n: site_of.get(n, "")):
        if n not in site_of:
            continue
        a = out.attestations[n]
        detail: dict[str, Any] = {"fate": fates[n]}
        if "unmask_signature" in a:
            detail.update(unmask_digest=a["unmask_digest"], unmask_signature=a["unmask_signature"])
        contributions.append({
            "site_id": site_of[n], "update_digest": a["update_digest"], "num_examples": None,
            "data_fingerprint": a["data_fingerprint"], "signature": a["signature"],
            "fate": Fate.ACCEPTED if fates[n] == SecAggFate.IN_SUM else Fate.REJECTED, "score": None,
            "detail": {"aggregation": "secure sum" if fates[n] == SecAggFate.IN_SUM else fates[n],
                       "secagg": detail},
        })
    secagg = {**out.lineage,
              "participant_sites": sorted(site_of[n] for n in out.participants if n in site_of),
              "recovered_sites": sorted(site_of[n] for n in out.recovered if n in site_of),
              "site_fates": {site_of[n]: fates[n] for n in sorted(site_of, key=site_of.get)}}
    return RoundAudit(
        replied=sorted(set(site_of.values()) - set(dropped)), dropped=dropped, rejected=rejected,
        accepted=[c["site_id"] for c in contributions if c["fate"] == Fate.ACCEPTED],
        contributions=contributions, secagg=secagg)

"""The round-record side of ``lineage verify``: model chain, contributions, evaluations.

:class:`RoundChecks` is the part of :class:`fedsilo.lineage.chaincheck.ChainChecker` that
checks one round record whose body already matched its schema: rounds increase, ``model_in``
is the model the chain is at, each contribution comes once from a known, joined site (its
signature queued on the :class:`~fedsilo.lineage.sigcheck.SignaturePool`), ``accepted``
equals the contributions whose fate is :attr:`Fate.ACCEPTED`, SecAgg+ detail only in SecAgg+
rounds, and each evaluation is of the round's ``model_out``, once per site. A plain round
whose contributions are all chained (the bulk of a long chain) is checked by column in one
pass (:meth:`RoundChecks._chained_round`); anything else, or anything off, goes through the
per-contribution reference loop, which names the failure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from hashlib import sha256
from itertools import compress, repeat
from operator import add, eq, itemgetter
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .fastcheck import Columns
from .fates import Fate, SecAggFate
from .sigcheck import Failure, Job, SignaturePool
from .signing import (
    CHAINED_CONTRIBUTION_SCHEMA,
    CONTRIBUTION_SCHEMA,
    GENESIS_ATTESTATION,
    evaluation_message,
    unmask_message,
)

SIG_HEX = re.compile(r"[0-9a-f]{128}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SECAGG_FATES = frozenset(f.value for f in SecAggFate)
_ACCEPTED = Fate.ACCEPTED.value  # a plain str compares faster than the enum member
_KEY, _JOINED = itemgetter(0), itemgetter(1)  # of a ``sites`` entry: (public key, from round)
_HEXDIGEST = type(sha256()).hexdigest


class RoundChecks:
    """Round checks over the chain state kept by :class:`ChainChecker`.

    Attributes (set by the checker):
        check_sites: whether site signatures are checked.
        signatures: the pool the site signature checks are queued on.
        run_id: the genesis run id (signed messages name it).
        sites: site id -> (public key, first round it may contribute to).
        current: the model the chain is at; after_round: round -> model after it.
        last_round: the last round seen; rounds, site_signatures: counters.
    """

    check_sites: bool
    signatures: SignaturePool
    run_id: str
    _run_id_json: str
    sites: dict[str, tuple[Ed25519PublicKey, int]]
    current: str | None
    after_round: dict[int, str]
    last_round: int
    rounds: int
    site_signatures: int
    all_signatures: bool
    #: site id -> the digest of its last chained attestation so far (its chain's head)
    attested: dict[str, str]
    #: per round with chained attestations: (site ids, their attestation digests), in chain
    #: order; read only to tell a fork from a break when a link fails
    attest_history: list[tuple[Sequence[str], Sequence[str]]]
    #: site id -> (record, site id, key, contribution, message) of its last chained
    #: attestation, whose signature default mode checks at the end
    chain_heads: dict[str, tuple[int, str, Ed25519PublicKey, dict[str, Any], bytes]]

    def _round(self, i: int, body: dict[str, Any], columns: Columns | None = None) -> None:
        """Check round record ``i`` (``columns``: its contributions' columns, when
        :func:`~fedsilo.lineage.fastcheck.round_columns` checked them valid)."""
        r = body["round"]
        self.rounds += 1
        if r <= self.last_round:
            raise Failure(i, "round", f"round {r} does not follow round {self.last_round}")
        if body["model_in"] != self.current:
            raise Failure(
                i, "round",
                f"round {r} model_in {body['model_in']} is not the current model {self.current}",
            )
        if body["status"] == "skipped":
            if body["model_out"] != body["model_in"]:
                raise Failure(i, "round", f"skipped round {r} changed the model")
        else:
            self.current = body["model_out"]
        self.after_round[r] = self.current
        self.last_round = r
        accepted = None
        if columns is not None and columns.prevs is not None and body["secagg"] is None:
            accepted = self._chained_round(i, r, body["contributions"], columns)
        if accepted is None:  # unchained, SecAgg+, or something to name: one by one
            accepted = self._contributions(i, r, body)
        if accepted != set(body["accepted"]) or len(body["accepted"]) != len(accepted):
            raise Failure(
                i, "round",
                f"accepted list {sorted(body['accepted'])} does not match the accepted "
                f"contributions {sorted(accepted)}",
            )
        self._evaluations(i, r, body)

    def _chained_round(self, i: int, r: int, cs: list[dict[str, Any]],
                       columns: Columns) -> set[str] | None:
        """The contributions of a plain round whose every contribution is chained, checked
        by column (C-level ``map`` and ``zip``; per contribution only its message's
        f-string): duplicates, unknown or not yet joined sites, and every site's link (the
        heads it expects against the ``prev`` column) in one pass; then each attestation's
        digest moves its site's head on. Returns the accepted site ids, or None (nothing
        changed) when anything is off: the reference loop (:meth:`_contributions`) then
        names it."""
        ids, prevs = columns.ids, columns.prevs
        assert prevs is not None
        entries = list(map(self.sites.get, ids))
        heads = tuple(map(self.attested.get, ids, repeat(GENESIS_ATTESTATION)))
        if (len(set(ids)) != len(ids) or None in entries
                or (entries and max(map(_JOINED, entries)) > r) or any(columns.details)
                or heads != tuple(prevs)):
            return None
        # the signed message of each (as the reference loop below writes it; an f-string
        # per item is faster than %-formatting through map)
        middle = (f'"round":{r},"run_id":{self._run_id_json},"schema":'
                  f'"{CHAINED_CONTRIBUTION_SCHEMA}",')
        messages = [
            f'{{"data_fingerprint":"{df}","prev":"{prev}",{middle}"update_digest":"{ud}"}}'.encode()
            for df, prev, ud in zip(columns.data_fingerprints, prevs, columns.update_digests,
                                    strict=True)
        ]
        digests = list(map(add, repeat("sha256:"), map(_HEXDIGEST, map(sha256, messages))))
        self.attested.update(zip(ids, digests, strict=True))
        self.attest_history.append((ids, digests))
        keys = map(_KEY, entries)
        if self.all_signatures and self.check_sites:
            for job in zip(repeat(i), ids, keys, cs, messages):  # noqa: B905 (repeat)
                self.signatures.queue(_site_job(*job))
            self.site_signatures += len(ids)
        else:  # each site's last is checked at the end (`finish`)
            self.chain_heads.update(
                zip(ids, zip(repeat(i), ids, keys, cs, messages), strict=False))
        return set(compress(ids, map(eq, columns.fates, repeat(_ACCEPTED))))

    def _contributions(self, i: int, r: int, body: dict[str, Any]) -> set[str]:
        """Check each contribution of round ``r``; return the accepted site ids (the
        reference: it names the first failure; :meth:`_chained_round` is the fast path)."""
        seen: set[str] = set()
        accepted: set[str] = set()
        sites, attested, heads = self.sites, self.attested, self.chain_heads
        chained_ids: list[str] = []
        chained_digests: list[str] = []
        queue_each = self.all_signatures and self.check_sites
        run_id = self._run_id_json
        secure = body["secagg"] is not None
        for c in body["contributions"]:
            site_id = c["site_id"]
            if site_id in seen:
                raise Failure(i, "round", f"site {site_id!r} contributes twice in round {r}")
            seen.add(site_id)
            if c["fate"] == _ACCEPTED:
                accepted.add(site_id)
            entry = sites.get(site_id)
            if entry is None:
                raise Failure(i, "round", f"contribution from unknown site {site_id!r}")
            if entry[1] > r:
                raise Failure(
                    i, "round", f"site {site_id!r} contributes in round {r} before joining"
                )
            prev = c.get("prev")
            if prev is not None:
                # a chained attestation: prev must be the site's previous attestation
                head = attested.get(site_id, GENESIS_ATTESTATION)
                if prev != head:
                    raise Failure(i, "round", _link_problem(
                        site_id, r, prev, head, self.attest_history))
                message = (
                    f'{{"data_fingerprint":"{c["data_fingerprint"]}","prev":"{prev}",'
                    f'"round":{r},"run_id":{run_id},"schema":"{CHAINED_CONTRIBUTION_SCHEMA}",'
                    f'"update_digest":"{c["update_digest"]}"}}'
                ).encode()
                attested[site_id] = digest = "sha256:" + sha256(message).hexdigest()
                chained_ids.append(site_id)
                chained_digests.append(digest)
                if queue_each:
                    self.signatures.queue(_site_job(i, site_id, entry[0], c, message))
                    self.site_signatures += 1
                else:  # checked at the end if it stays the site's last (`finish`)
                    heads[site_id] = (i, site_id, entry[0], c, message)
            elif self.check_sites:  # unchained: its own signature, in every mode
                message = (
                    f'{{"data_fingerprint":"{c["data_fingerprint"]}","round":{r},"run_id":'
                    f'{run_id},"schema":"{CONTRIBUTION_SCHEMA}","update_digest":"'
                    f'{c["update_digest"]}"}}'
                ).encode()
                self.signatures.queue(_site_job(i, site_id, entry[0], c, message))
                self.site_signatures += 1
            if not secure:
                if c["detail"].get("secagg") is not None or c["num_examples"] is None:
                    # a secret count or SecAgg+ detail belongs to secure rounds only
                    raise Failure(
                        i, "round", f"site {site_id!r} contribution has a SecAgg+ form (null "
                        "num_examples or detail.secagg) in a round without SecAgg+"
                    )
            elif c["detail"].get("secagg") is not None:
                self._secagg_contribution(i, r, site_id, c["detail"]["secagg"], entry[0])
        if chained_ids:
            self.attest_history.append((chained_ids, chained_digests))
        return accepted

    def _evaluations(self, i: int, r: int, body: dict[str, Any]) -> None:
        """The sites' signed evaluations of the round's model (optional field): each from
        a known site, once, of ``model_out``, with its signature checked and counted."""
        seen: set[str] = set()
        for e in body.get("evaluations", ()):
            site_id = e["site_id"]
            entry = self.sites.get(site_id)
            if entry is None or entry[1] > r:
                why = "unknown" if entry is None else "not yet joined"
                raise Failure(i, "round", f"evaluation from {why} site {site_id!r}")
            if site_id in seen:
                raise Failure(i, "round", f"site {site_id!r} evaluates twice in round {r}")
            seen.add(site_id)
            if e["model_digest"] != body["model_out"]:
                raise Failure(
                    i, "round", f"site {site_id!r} evaluation is of model {e['model_digest']}, "
                    f"not the round's model_out {body['model_out']}"
                )
            if self.check_sites:
                message = evaluation_message(self.run_id, r, e["model_digest"], e["loss"],
                                             e["metrics"], e["num_examples"])
                what = f"site signature of {site_id!r} over its evaluation invalid"
                self.signatures.queue(
                    (i, "round", what, entry[0], bytes.fromhex(e["signature"]), message)
                )
                self.site_signatures += 1

    def _secagg_contribution(
        self, i: int, r: int, site_id: str, secagg: Any, public: Ed25519PublicKey
    ) -> None:
        """A SecAgg+ contribution's ``detail.secagg``: its fate, and the site's signature
        over its unmask reply (checked like the contribution's own)."""
        where = f"site {site_id!r} contribution detail.secagg"
        if type(secagg) is not dict or secagg.get("fate") not in _SECAGG_FATES:
            raise Failure(
                i, "round", f"{where}: expected an object with a fate in {sorted(_SECAGG_FATES)}"
            )
        unmask = {k: secagg[k] for k in ("unmask_digest", "unmask_signature") if k in secagg}
        if not unmask:
            return
        digest, signature = unmask.get("unmask_digest"), unmask.get("unmask_signature")
        if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            raise Failure(i, "round", f"{where}.unmask_digest: expected 'sha256:<64 hex>'")
        if not (isinstance(signature, str) and SIG_HEX.fullmatch(signature)):
            raise Failure(
                i, "round", f"{where}.unmask_signature: expected 128 lower-case hex characters"
            )
        if self.check_sites:
            message = unmask_message(self.run_id, r, digest)
            what = f"site signature of {site_id!r} over its SecAgg+ unmask reply invalid"
            self.signatures.queue((i, "round", what, public, bytes.fromhex(signature), message))
            self.site_signatures += 1


def _site_job(i: int, site_id: str, public: Ed25519PublicKey, c: dict[str, Any],
              message: bytes) -> Job:
    """The signature check of contribution ``c`` (record ``i``) over ``message``."""
    return (i, "round", f"site signature of {site_id!r} invalid", public,
            bytes.fromhex(c["signature"]), message)


def _link_problem(site_id: str, r: int, prev: str, head: str,
                  history: list[tuple[Sequence[str], Sequence[str]]]) -> str:
    """Why a chained attestation's ``prev`` is not the site's head: a fork (it links to an
    attestation that another one already follows) or a break (dropped or altered)."""
    earlier = [d for ids, digests in history for s, d in zip(ids, digests, strict=True)
               if s == site_id]
    if prev == GENESIS_ATTESTATION or prev in earlier[:-1]:
        return (f"site {site_id!r} attestation chain forked at round {r}: its prev "
                f"{prev[:19]}… is already followed by another attestation")
    return (f"site {site_id!r} attestation chain broken at round {r}: prev {prev[:19]}… is "
            f"not its previous attestation {head[:19]}… (one dropped or altered, or the "
            "link altered)")

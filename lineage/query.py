"""Questions about a finished run: who contributed to a model, does a site's ledger agree."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .chain import LoadedChain, load_chain
from .errors import LineageError
from .fates import Fate
from .ledger import SiteLedger

SECURE_SUM = "secagg:not-reported"
"""Stands for the data fingerprint of a site that contributed through secure aggregation
without a signed contribution on the record (a site without a key, or a chain written
before sites signed their masked inputs): the server saw only the sum."""

REFUSAL_PREFIX = "refused by site: "
"""How a server may prefix a site's own refusal reason in ``rejected`` (both forms match)."""

_COMPARED = ("update_digest", "data_fingerprint", "num_examples", "signature")


@dataclass
class Contributor:
    """A site (with one data fingerprint) whose accepted updates fed a model.

    Attributes:
        site_id: the site.
        data_fingerprint: the data version the updates were computed on (`SECURE_SUM`
            for rounds where the site's update entered only a secure sum).
        rounds: rounds (ascending) in which an accepted update of this site/data went in.
        public_key: the site's public key (64 hex) from the genesis or join record.
    """

    site_id: str
    data_fingerprint: str
    rounds: list[int] = field(default_factory=list)
    public_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)


def contributors(run_dir: Path, model_digest: str | None = None) -> list[Contributor]:
    """Every site and data fingerprint whose accepted updates fed, transitively, a model.

    Walks back from the round that produced ``model_digest`` through each round's
    ``model_in`` to the initial model (following resumes, so superseded rounds do not count).
    Sites whose updates entered a secure sum (SecAgg rounds list them as
    ``secagg.participant_sites``) count with the fingerprint of their signed contribution,
    or `SECURE_SUM` when there is none.

    Args:
        run_dir: the run directory (or its ``lineage.sqlite``).
        model_digest: ``"sha256:<hex>"`` of a model the run produced (a round's
            ``model_out`` or the initial model); default: the model the chain ends with.

    Returns:
        Contributors sorted by site id then fingerprint; empty for the initial model.

    Raises:
        LineageError: if the store is unreadable or no round of the run produced that model.
    """
    chain = load_chain(run_dir)
    initial = chain.genesis["initial_model_digest"]
    target = model_digest if model_digest is not None else chain.current_model()
    rounds = [
        (i, env["body"])
        for i, env in enumerate(chain.envelopes)
        if env["type"] == "round" and env["body"]["status"] == "completed"
    ]
    keys = _site_keys(chain)
    found: dict[tuple[str, str], Contributor] = {}
    position = len(rounds)
    wanted = target
    while wanted != initial:
        position = next(
            (p for p in range(position - 1, -1, -1) if rounds[p][1]["model_out"] == wanted), -1
        )
        if position < 0:
            if wanted == target:
                raise LineageError(f"model {target} was not produced by any round of this run")
            break  # broken back-link; `verify` reports it
        body = rounds[position][1]
        keys_in = [(c["site_id"], c["data_fingerprint"])
                   for c in body["contributions"] if c["fate"] == Fate.ACCEPTED]
        # a site in a secure sum without a signed contribution (a site without a key, or
        # a chain written before sites signed under SecAgg+) still fed the model
        signed = {site for site, _ in keys_in}
        secure = body.get("secagg") or {}
        keys_in += [(site, SECURE_SUM) for site in secure.get("participant_sites", [])
                    if site not in signed]
        for key in keys_in:
            entry = found.setdefault(key, Contributor(*key, public_key=keys.get(key[0], "")))
            entry.rounds.append(body["round"])
        wanted = body["model_in"]
    for entry in found.values():
        entry.rounds.sort()
    return [found[k] for k in sorted(found)]


def _site_keys(chain: LoadedChain) -> dict[str, str]:
    keys = {s["site_id"]: s["public_key"] for s in chain.genesis["sites"]}
    for env in chain.of_type("site_join"):
        keys[env["body"]["site"]["site_id"]] = env["body"]["site"]["public_key"]
    return keys


def reconcile(run_dir: Path, ledger_path: Path, site_id: str | None = None) -> list[str]:
    """Compare a site's ledger with the server's chain; return every mismatch (one line each).

    Checks: each ``sent`` entry of this run appears as a contribution of that site in that
    round with the same update digest, data fingerprint, example count (unless the chain's
    is null: a SecAgg+ secure sum) and signature; each ``unmasked`` entry (a SecAgg+ unmask
    reply) matches the digest and signature in that contribution's ``detail.secagg``; each
    contribution of the site in the chain, and each unmask signature, appears in the
    ledger; each ``refused`` entry
    matches ``rejected[site]`` in that round's record, which is the site's reason, as is or
    prefixed with :data:`REFUSAL_PREFIX` (``"refused by site: "``).

    Args:
        run_dir: the run directory (or its ``lineage.sqlite``).
        ledger_path: the site's ``ledger.jsonl`` (entries of other runs are ignored).
        site_id: the site whose ledger it is; default: the one site id in the ledger.

    Returns:
        Mismatch descriptions, ledger order first, then chain order; empty when they agree.

    Raises:
        LineageError: if either file is unreadable, or the site cannot be determined.
    """
    chain = load_chain(run_dir)
    run_id = chain.genesis["run_id"]
    entries = [(n, e) for n, e in enumerate(SiteLedger(ledger_path).entries(), start=1)]
    site_ids = sorted({e["site_id"] for _, e in entries})
    if site_id is None:
        if len(site_ids) != 1:
            raise LineageError(
                f"{ledger_path}: cannot tell whose ledger it is (site ids {site_ids}); "
                "name the site explicitly"
            )
        site_id = site_ids[0]
    mine = [(n, e) for n, e in entries if e["run_id"] == run_id and e["site_id"] == site_id]

    by_round: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    round_records: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for seq, env in enumerate(chain.envelopes):
        if env["type"] != "round":
            continue
        body = env["body"]
        round_records.setdefault(body["round"], []).append((seq, body))
        for c in body["contributions"]:
            if c["site_id"] == site_id:
                by_round.setdefault(body["round"], []).append((seq, c))

    mismatches: list[str] = []
    matched: set[tuple[int, int]] = set()
    unmasked: set[tuple[int, int]] = set()
    for n, entry in mine:
        r = entry["round"]
        where = f"ledger line {n} (round {r}, {entry['status']})"
        if entry["status"] == "refused":
            mismatches.extend(_check_refusal(where, site_id, entry, round_records.get(r, [])))
        elif entry["status"] == "unmasked":
            mismatches.extend(_check_unmasked(where, entry, by_round.get(r, []), unmasked))
        else:
            mismatches.extend(_check_sent(where, entry, by_round.get(r, []), matched))
    for r, items in by_round.items():
        for seq, c in items:
            if (seq, r) not in matched:
                mismatches.append(
                    f"chain record {seq} (round {r}): contribution of {site_id!r} with update "
                    f"{c['update_digest']} is not in the site's ledger"
                )
            if "unmask_signature" in _secagg(c) and (seq, r) not in unmasked:
                mismatches.append(
                    f"chain record {seq} (round {r}): SecAgg+ unmask reply of {site_id!r} "
                    f"{_secagg(c)['unmask_digest']} is not in the site's ledger"
                )
    return mismatches


def _secagg(c: dict[str, Any]) -> dict[str, Any]:
    """A contribution's ``detail.secagg`` (empty for a plain contribution)."""
    secagg = c["detail"].get("secagg")
    return secagg if isinstance(secagg, dict) else {}


def _compared(c: dict[str, Any]) -> tuple[str, ...]:
    # under SecAgg+ the example count stays inside the secure sum (null on the record);
    # the site's ledger keeps its own count, which has nothing on the chain to match
    return tuple(k for k in _COMPARED if not (k == "num_examples" and c[k] is None))


def _check_sent(
    where: str, entry: dict[str, Any], candidates: list[tuple[int, dict[str, Any]]],
    matched: set[tuple[int, int]],
) -> list[str]:
    r = entry["round"]
    if not candidates:
        return [f"{where}: update {entry['update_digest']} is not in the chain"]
    exact = [(seq, c) for seq, c in candidates if all(c[k] == entry[k] for k in _compared(c))]
    if exact:
        matched.update((seq, r) for seq, _ in exact)
        return []
    seq, c = candidates[0]
    matched.add((seq, r))
    return [
        f"{where}: {k} differs: ledger {entry[k]!r}, chain record {seq} {c[k]!r}"
        for k in _compared(c)
        if c[k] != entry[k]
    ]


def _check_unmasked(
    where: str, entry: dict[str, Any], candidates: list[tuple[int, dict[str, Any]]],
    unmasked: set[tuple[int, int]],
) -> list[str]:
    """A SecAgg+ unmask reply in the ledger against the site's contribution's
    ``detail.secagg`` (its digest and signature)."""
    r = entry["round"]
    signed = [(seq, _secagg(c)) for seq, c in candidates if "unmask_signature" in _secagg(c)]
    for seq, secagg in signed:
        if (secagg["unmask_digest"], secagg["unmask_signature"]) == (
            entry["unmask_digest"], entry["signature"]
        ):
            unmasked.add((seq, r))
            return []
    if not signed:
        return [f"{where}: unmask reply {entry['unmask_digest']} is not in the chain"]
    seq, secagg = signed[0]
    unmasked.add((seq, r))
    return [
        f"{where}: {name} differs: ledger {entry[key]!r}, chain record {seq} {secagg[name]!r}"
        for key, name in (("unmask_digest", "unmask_digest"), ("signature", "unmask_signature"))
        if secagg[name] != entry[key]
    ]


def _check_refusal(
    where: str, site_id: str, entry: dict[str, Any], records: list[tuple[int, dict[str, Any]]]
) -> list[str]:
    if not records:
        return [
            f"{where}: refusal ({entry['reason']!r}) but round {entry['round']} is not in the chain"
        ]
    accepted_forms = {entry["reason"], REFUSAL_PREFIX + entry["reason"]}
    for _seq, body in records:
        if body["rejected"].get(site_id) in accepted_forms:
            return []
    seq, body = records[-1]
    recorded = body["rejected"].get(site_id)
    if recorded is None:
        return [f"{where}: refusal ({entry['reason']!r}) is not recorded in chain record {seq}"]
    return [
        f"{where}: refusal reason differs: ledger {entry['reason']!r}, chain record {seq} "
        f"{recorded!r}"
    ]

"""The run's start: the handshake query and the genesis record it fills.

Flower's node ids are random per run, so a run starts with one query to every connected
node: each site answers with its stable site id, public key, data fingerprint, policy,
task identity, declared (and signed) example count and app digest. `handshake` checks
each answer and returns the sites sorted by site id (sampling is a seeded draw over that
list); a site that does not qualify is refused with a one-line reason. Under SecAgg+ the
query also carries the first secure round's setup request (`SecAggSession`), so that
round needs no setup exchange. `genesis_record` is the chain's first record.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsilo import lineage
from fedsilo.common import codec
from fedsilo.lineage.records import _is_digest as is_digest
from fedsilo.lineage.signing import verify_declaration
from fedsilo.privacy.screening import example_count
from fedsilo.server import task_round
from fedsilo.server.config import overreach
from fedsilo.server.messaging import send_and_receive
from fedsilo.server.run_store import now
from fedsilo.server.spec import FederationError, ServerSpec, SiteInfo
from fedsilo.server.stopping import check_stop

if TYPE_CHECKING:  # the SecAgg+ modules load only when a run uses them
    from fedsilo.server.secagg_round import SecAggSession


class HandshakeFailed(FederationError):
    """Fewer sites qualified than the run needs.

    sites: the sites that did qualify (sorted by site id); problems: one line per node
    that did not (the genesis record of a new run keeps them).
    """

    def __init__(self, message: str, sites: list[SiteInfo], problems: list[str]) -> None:
        super().__init__(message)
        self.sites = sites
        self.problems = problems


def expected_sites(spec: ServerSpec) -> int:
    """How many sites the handshake waits for and needs."""
    return spec.expected_sites or spec.config.sites


HANDSHAKE_WINDOW = 100
"""Least number of handshake queries in flight at once on Flower's simulation engine."""


def handshake_window(spec: ServerSpec) -> int:
    """Handshake queries in flight at once on an in-memory grid: a round's sample, at
    least `HANDSHAKE_WINDOW` (so up to 100 sites are asked all at once, as before). Flower's
    engine scans every stored message once per node to dispatch them: 1,000 queries at
    once cost 1,000 x 1,000 checks per scan; a window costs a round's scan."""
    return max(HANDSHAKE_WINDOW, spec.config.sites_per_round)


def wait_for_nodes(grid: Grid, spec: ServerSpec) -> list[int]:
    """The connected node ids once ``expected_sites`` are there (FederationError after
    ``node_wait_timeout`` seconds)."""
    want = expected_sites(spec)
    deadline = time.monotonic() + spec.node_wait_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of {want} sites connected within {spec.node_wait_timeout:.0f} s"
            )
        check_stop()
        time.sleep(0.5)


def handshake(grid: Grid, spec: ServerSpec, federation: dict[str, Any],
              secagg: SecAggSession | None, first_round: int) -> list[SiteInfo]:
    """Ask every connected node who it is; every expected site must answer.

    ``secagg`` (None without SecAgg+) gets the first secure round's keys, asked for with
    this query when ``first_round`` is a training round. Raises `HandshakeFailed` when
    fewer than the expected sites qualify, naming each node that failed and why.
    """
    nodes = wait_for_nodes(grid, spec)
    content = RecordDict({codec.FEDERATION_RECORD: ConfigRecord(federation)})
    first = None
    if secagg is not None and first_round <= spec.config.rounds:
        # it assumes the round samples min(nodes, sites per round) sites; if it samples
        # another number, its sites get a setup message instead
        first = secagg.attach_setup(content, first_round,
                                    min(len(nodes), spec.config.sites_per_round))
    msgs = [Message(content, dst_node_id=n, message_type=f"{MessageType.QUERY}.handshake")
            for n in nodes]
    # every node is asked, at most a window of them at a time (simulation engine only:
    # see `fedsilo.server.messaging`); all within round_timeout
    replies = send_and_receive(grid, msgs, timeout=spec.config.round_timeout,
                               window=handshake_window(spec))
    if secagg is not None and first is not None:
        secagg.keys_from_handshake(first, replies)
    sites: dict[str, SiteInfo] = {}
    problems: list[str] = []
    for reply in replies:
        info = _site_of(reply, spec, problems)
        if info is None:
            continue
        if info.site_id in sites:
            raise FederationError(f"two nodes claim site id {info.site_id!r}")
        sites[info.site_id] = info
    ordered = [sites[s] for s in sorted(sites)]
    want = expected_sites(spec)
    if len(sites) < want:
        # A federation that silently runs with fewer sites than configured is worse
        # than one that does not start: say which nodes failed and why.
        detail = "; ".join(problems) or _silent(nodes, replies, spec.config.round_timeout)
        raise HandshakeFailed(f"handshake: {len(sites)} of {want} sites answered ({detail})",
                              ordered, problems)
    return ordered


def _silent(nodes: list[int], replies: list[Message], timeout: float) -> str:
    """Which nodes did not answer the handshake, for its one-line error."""
    silent = sorted(set(nodes) - {int(r.metadata.src_node_id) for r in replies})
    return (f"{len(silent)} node{'' if len(silent) == 1 else 's'} did not answer within "
            f"round_timeout={timeout:g} s: {', '.join(map(str, silent))}")


def _site_of(reply: Message, spec: ServerSpec, problems: list[str]) -> SiteInfo | None:
    """The site a handshake reply describes, or None (with the reason in ``problems``)."""
    node = int(reply.metadata.src_node_id)
    if reply.has_error():
        problems.append(f"node {node}: {reply.error.reason}")
        return None
    rec = codec.record(reply.content, codec.SITE_RECORD, ConfigRecord)
    if rec is None:
        problems.append(f"node {node}: no site record in its handshake reply")
        return None
    if not isinstance(rec.get("site_id"), str) or not rec["site_id"]:
        problems.append(f"node {node}: no site id in its handshake reply")
        return None
    info = SiteInfo(
        site_id=str(rec["site_id"]),
        node_id=node,
        public_key=str(rec.get("public_key", "")),
        data_fingerprint=str(rec.get("data_fingerprint", "")),
        policy=str(rec.get("policy", "{}")),
        app_digest=str(rec.get("app_digest", "")),
    )
    if info.app_digest and not is_digest(info.app_digest):  # never into genesis
        problems.append(f"node {node} ({info.site_id}): app digest "
                        f"{info.app_digest!r:.80} is not 'sha256:<64 hex>'")
        return None
    declared = task_round.identity_problem(spec.task_identity, rec) or \
        declared_examples(rec, info, spec.run_id)
    if isinstance(declared, str):  # the site is refused: say why, in one line
        problems.append(f"node {node} ({info.site_id}): {declared}")
        return None
    info.num_examples = declared
    if info.public_key:
        info.declaration = str(rec.get("declaration", ""))
    if rec.get("data_profile"):  # checked with the others' by `fedsilo.server.data_profiles`
        from fedsilo.tasks.statistics import StatisticsError, decode_statistics

        try:
            info.profile = decode_statistics(str(rec["data_profile"]), "data profile")
        except StatisticsError:
            info.profile = {}  # malformed: left out of the drift check, with a note
    return info


def declared_examples(rec: ConfigRecord, info: SiteInfo, run_id: str) -> int | str:
    """The example count a site declared at the handshake, or why the site is refused:
    no count, a count that is not a positive integer, or (for a site with a key) a
    signature over (run id, site id, data fingerprint, count) that does not verify."""
    if "num_examples" not in rec:
        return ("declared no example count (its Trainer must implement num_examples(), "
                "see fedsilo.client.trainer.DeclaresExamples)")
    try:
        declared = example_count(rec["num_examples"])
    except ValueError as exc:
        return f"declared example count {exc}"
    signature = rec.get("declaration", "")
    if info.public_key and not verify_declaration(
        info.public_key, signature if isinstance(signature, str) else "", run_id,
        info.site_id, info.data_fingerprint, declared,
    ):
        return f"the signature over its declared example count ({declared}) does not verify"
    return declared


def check_resumed_sites(sites: list[SiteInfo], known: dict[str, str] | None) -> None:
    """After a resume, sites must be the ones (same ids and keys) the genesis record
    names (``known``: site id -> key; None: no chain to check against)."""
    if known is None:
        return
    for site in sites:
        if site.site_id not in known:
            raise FederationError(f"site {site.site_id!r} was not part of this run at genesis")
        if known[site.site_id] != site.public_key:
            raise FederationError(f"site {site.site_id!r} presents a different key than at genesis")


def genesis_record(spec: ServerSpec, sites: list[SiteInfo], *, initial_model_digest: str,
                   server_key: Any, statistics_record: dict[str, Any] | None,
                   problems: list[str] | None = None,
                   profiles_record: dict[str, Any] | None = None) -> Any:
    """The chain's first record: config, code version, initial model, keys, the sites,
    the task identity (with its statistics, when queried, and the sites' data profiles)
    and the run's notes."""
    from fedsilo.server.provenance import code_version

    task: dict[str, Any] = {}
    if spec.task_identity is not None:
        task = {"task": {**spec.task_identity,
                         **({"statistics": statistics_record}
                            if statistics_record is not None else {}),
                         **({"data_profiles": profiles_record}
                            if profiles_record is not None else {})}}
    return lineage.GenesisRecord(
        run_id=spec.run_id,
        created_at=now(),
        config=spec.config.to_dict(),
        code_version=code_version(),
        initial_model_digest=initial_model_digest,
        server_public_key=lineage.public_key_hex(server_key),
        sites=[
            lineage.SiteIdentity(
                site_id=s.site_id, public_key=s.public_key,
                data_fingerprint=s.data_fingerprint, policy=_json_dict(s.policy),
                num_examples=s.num_examples or None,
                declaration=s.declaration or None,
                app_digest=s.app_digest or None,
            )
            for s in sites
        ],
        notes=_genesis_notes(spec) + list(problems or []),
        **task,
    )


def _genesis_notes(spec: ServerSpec) -> list[str]:
    """What this run knowingly does outside a guarantee (recorded in genesis)."""
    found = overreach(spec.config)
    if found is None:
        return []
    how = "allowed by allow_overreach" if found[1] else "the aggregator states no tolerance"
    return [f"outside the aggregator's guarantee: {found[0]}; {how}"]


def _json_dict(text: str) -> dict[str, Any]:
    try:
        out = json.loads(text)
    except ValueError:
        return {"raw": text}
    return out if isinstance(out, dict) else {"raw": text}

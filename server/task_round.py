"""The Task's part of a run on the server: identity check, statistics query, frozen layers.

* `identity_problem`: the handshake compares each site's task identity with the
  server's; a differing site is refused with one line naming what differs.
* `query_statistics`: when the task asks for federated statistics, one query to every
  site before round 1 collects each site's sums; the server adds them up (`sum_statistics`)
  and sends the sum with every train and evaluate message (`statistics_records`).
  The sum's digest (and its values when small) go into the genesis record's ``task``.
  Under SecAgg+ (a run's `SecAggSession`) the server learns only the sum: the clear query
  gets each site's layout (names and shapes) and no values, then one SecAgg+ exchange of
  its own (run id + `SECURE_RUN_SUFFIX`, message types `SECURE_MESSAGE_TYPES`, every
  site, weight 1) sums the sites' sums encoded exactly (`fedsilo.tasks.statistics.
  secure_vector`: 128-bit fixed point with 2^-32 resolution, cut into 16-bit limbs that
  the quantiser carries unchanged); the lineage form then says ``"summed": "secagg+"``.
  Every site must take part: a site that drops out fails the query (a partial sum would
  standardise with other statistics than the sites'), as a site that does not answer
  the clear query does.
* `ModelParts`: the global model split into the layers the sites train (the server's
  aggregation layout) and the task's frozen layers (sent, never sent back or aggregated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsilo.common import codec
from fedsilo.server.messaging import send_and_receive
from fedsilo.tasks.base import TaskIdentity, statistics_digest
from fedsilo.tasks.profile import split_profile
from fedsilo.tasks.statistics import (
    LAYOUT_KEY,
    LIMB_BITS,
    SECURE_CLIP,
    SECURE_KEY,
    SECURE_MAX_SITES,
    SECURE_MESSAGE_TYPES,
    SECURE_RUN_SUFFIX,
    STATISTICS_KEY,
    STATISTICS_RECORD,
    StatisticsError,
    decode_layout,
    decode_statistics,
    encode_layout,
    encode_statistics,
    record_form,
    secure_length,
    secure_sum,
    sum_statistics,
)

if TYPE_CHECKING:
    from fedsilo.server.secagg_round import SecAggSession


def identity_problem(expected: Mapping[str, str] | None, rec: Mapping[str, Any]) -> str | None:
    """Why a site's handshake reply ``rec`` does not carry the server's task identity
    (one phrase, e.g. ``"task differs: layout_digest sha256:ab.. != sha256:cd.."``, the
    server's value first), or None when it matches or the server checks no task.

    A site that sends no identity at all runs a `Trainer` entry point of its own
    (``trainer =`` in ``site.toml``, no ``task``): it is not compared here; every update
    it sends is still checked against the model's layout, round by round."""
    if expected is None:
        return None
    ours = TaskIdentity.from_dict(expected)
    text = rec.get("task_identity")
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        return f"task differs: malformed task identity {text!r:.60}"
    try:
        theirs = TaskIdentity.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError) as exc:
        return f"task differs: malformed task identity ({exc})"
    diffs = ours.differences(theirs)
    return f"task differs: {'; '.join(diffs)}" if diffs else None


Summed = tuple[dict[str, np.ndarray] | None, dict[str, Any] | None, dict[str, np.ndarray] | None]


def query_statistics(grid: Grid, nodes: Mapping[int, str], federation: Mapping[str, Any],
                     timeout: float, secagg: SecAggSession | None = None) -> Summed:
    """Ask every site (node id -> site id) for its statistics; return (the task's sum, its
    lineage form, the sites' summed data profiles), None for each part no site sent (the
    task's `site_statistics` returned None; no profile was asked for). With ``secagg`` (the
    run's session) the sum is taken under SecAgg+ (module docstring); the data profiles
    travel that way only (`fedsilo.server.data_profiles`).

    `StatisticsError` (one line naming the site) when a site does not answer, sends none
    while others do, or sends sums that cannot be added to the others'."""
    fed = {**federation, SECURE_KEY: secagg is not None}
    key = STATISTICS_KEY if secagg is None else LAYOUT_KEY
    found, without = _ask(grid, nodes, fed, timeout, key)
    if not found:
        return None, None, None
    if without:
        raise StatisticsError(f"statistics: site {without[0]} sent no statistics, site "
                              f"{found[0][0]} did")
    if secagg is None:
        per_site = [(site, decode_statistics(text, f"statistics: site {site}"))
                    for site, text in found]
        total, profile = split_profile(sum_statistics(per_site))
        if total is None:
            return None, None, profile
        return total, record_form(total, statistics_digest(total), len(per_site)), profile
    total, profile = split_profile(_secure_sum(grid, nodes, fed, found, secagg, timeout))
    if total is None:
        return None, None, profile
    return total, {**record_form(total, statistics_digest(total), len(nodes)),
                   "summed": "secagg+"}, profile


def _ask(grid: Grid, nodes: Mapping[int, str], federation: Mapping[str, Any], timeout: float,
         key: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The clear statistics query: (site, its record's ``key``) of the sites that sent
    one, and the sites that sent none, by site id."""
    content = RecordDict({codec.FEDERATION_RECORD: ConfigRecord(dict(federation))})
    msgs = [Message(content, dst_node_id=n, message_type=f"{MessageType.QUERY}.statistics")
            for n in sorted(nodes)]
    by_node = {int(r.metadata.src_node_id): r
               for r in send_and_receive(grid, msgs, timeout=timeout)}
    found: list[tuple[str, str]] = []
    without: list[str] = []
    for node, site in sorted(nodes.items(), key=lambda kv: kv[1]):
        reply = by_node.get(node)
        if reply is None:
            raise StatisticsError(f"statistics: site {site} did not answer the statistics query")
        if reply.has_error():
            raise StatisticsError(f"statistics: site {site}: {reply.error.reason}")
        rec = codec.record(reply.content, STATISTICS_RECORD, ConfigRecord)
        text = "" if rec is None else str(rec.get(key, ""))
        if text:
            found.append((site, text))
        else:
            without.append(site)
    return found, without


def _secure_sum(grid: Grid, nodes: Mapping[int, str], federation: Mapping[str, Any],
                layouts: list[tuple[str, str]], session: SecAggSession, timeout: float
                ) -> dict[str, np.ndarray]:
    """The sites' statistics summed by one SecAgg+ exchange of their own."""
    import dataclasses

    from fedsilo.server.secagg_round import SecAggSession

    layout = decode_layout(layouts[0][1], f"statistics: site {layouts[0][0]}")
    for site, text in layouts[1:]:
        theirs = decode_layout(text, f"statistics: site {site}")
        if theirs != layout:
            raise StatisticsError(f"statistics: site {site}'s statistics {theirs} differ from "
                                  f"site {layouts[0][0]}'s {layout}")
    if len(nodes) > SECURE_MAX_SITES:
        raise StatisticsError(f"statistics: {len(nodes)} sites exceed the {SECURE_MAX_SITES} "
                              "whose statistics one SecAgg+ exchange can sum exactly")
    # the run's graph parameters; the exact limb encoding's quantisation (scale 1)
    config = dataclasses.replace(session.config, clip_range=SECURE_CLIP, bits=LIMB_BITS,
                                 max_weight=1.0)
    exchange = SecAggSession(config, session.run_id + SECURE_RUN_SUFFIX, timeout=timeout,
                             vector_length=secure_length(layout),
                             message_types=SECURE_MESSAGE_TYPES, precise=True)
    content = RecordDict({
        codec.FEDERATION_RECORD: ConfigRecord(dict(federation)),
        STATISTICS_RECORD: ConfigRecord({LAYOUT_KEY: encode_layout(layout)})})
    out = exchange.exchange(grid, sorted(nodes), train_content=content, server_round=1)
    if not out.ok or out.sum_float64 is None:
        raise StatisticsError(f"statistics: the SecAgg+ sum failed: {out.reason}")
    missing = sorted(nodes[n] for n in set(nodes) - set(out.participants))
    if missing:
        raise StatisticsError(f"statistics: site {missing[0]} left the SecAgg+ sum of the "
                              "statistics; every site's statistics are needed")
    return secure_sum(out.sum_float64, len(out.participants), layout)


def statistics_records(stats: Mapping[str, np.ndarray] | None) -> dict[str, ConfigRecord]:
    """The record carrying the summed statistics in a train or evaluate message ({} if none)."""
    if stats is None:
        return {}
    return {STATISTICS_RECORD: ConfigRecord({STATISTICS_KEY: encode_statistics(stats)})}


@dataclass
class ModelParts:
    """The global model as the sites receive it (``full``) and as the server aggregates
    it (``trainable``: every layer but the task's frozen ones, in the model's order)."""

    full: codec.ModelLayout
    trainable: codec.ModelLayout
    frozen: dict[str, np.ndarray]

    @classmethod
    def split(cls, weights: Mapping[str, np.ndarray], frozen_names: Sequence[str]) -> ModelParts:
        unknown = sorted(set(frozen_names) - set(weights))
        if unknown:
            raise ValueError(f"frozen_layers: {unknown} are not layers of the task's model "
                             f"(layers: {list(weights)})")
        frozen = {k: np.array(weights[k], copy=True) for k in weights if k in frozen_names}
        if len(frozen) == len(weights):
            raise ValueError("frozen_layers: every layer is frozen; nothing left to train")
        trainable = {k: v for k, v in weights.items() if k not in frozen}
        return cls(codec.ModelLayout.from_arrays(weights), codec.ModelLayout.from_arrays(trainable),
                   frozen)

    def weights(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """The whole model (frozen layers included, in order) from the trainable vector."""
        if not self.frozen:
            return self.trainable.unflatten(flat)
        parts = self.trainable.unflatten(flat)
        return {k: self.frozen[k] if k in self.frozen else parts[k] for k in self.full.names}

    def wire(self, flat: np.ndarray) -> np.ndarray:
        """The whole model's flat vector, as sent to the sites."""
        return flat if not self.frozen else self.full.flatten(self.weights(flat))

    def layout_config(self) -> dict[str, str]:
        """The round config's layouts: the model sent and, with frozen layers, the update's."""
        out = {"layout": self.full.to_json()}
        if self.frozen:
            out["update_layout"] = self.trainable.to_json()
        return out

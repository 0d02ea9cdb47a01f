"""A site's own state across the messages of a run: its privacy budget and its Trainer's.

Flower's deployment runtime starts a fresh ClientApp process for every message, and a
simulation may hand a node's messages to another worker, so what a `Site` keeps in
memory is gone by the next round: a site's ceiling (`fedsilo.privacy.site_budget`) would
count one participation each time, and the built-in trainer's DP-SGD accountant would
start again at zero. What must last the run lives in the node's ``context.state``, which
Flower carries from message to message of a run: the site's `SiteBudget`, the state
of a Trainer that `KeepsState`, and the record-level DP releases of its data profile
(``record_releases``: their noise multipliers, which its DP-SGD accountant composes).
`restore` puts it into the site before its training step (after the Trainer is rebuilt
with the round's statistics, which a fresh process does); `keep` writes it back after.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message

from fedsilo.tasks.trainer import KeepsState

if TYPE_CHECKING:
    from fedsilo.client.app import Site

STATE_KEY = "fedsilo.site_state"
"""The ``context.state`` record holding the site's state as one JSON string."""


def _saved(context: Context) -> dict[str, Any]:
    record = context.state.get(STATE_KEY)
    if not isinstance(record, ConfigRecord) or "json" not in record:
        return {}
    return dict(json.loads(str(record["json"])))


def restore(site: Site, msg: Message, context: Context) -> Site:
    """``site`` with its budget and its Trainer's state of this run (none on its first
    message), the Trainer being the one ``msg``'s statistics select."""
    saved = _saved(context)
    if site.policy.max_epsilon is not None:
        from fedsilo.privacy.site_budget import SiteBudget

        site.state["budget"] = SiteBudget(site.policy.max_epsilon, saved.get("budget"))
    if saved.get("record_releases"):
        site.state["record_releases"] = list(saved["record_releases"])
    site = site.apply_statistics(msg)
    if isinstance(site.trainer, KeepsState) and "trainer" in saved:
        site.trainer.load_state_dict(saved["trainer"])
    return site


def keep(site: Site, context: Context, *, releases_only: bool = False) -> None:
    """Write ``site``'s budget, Trainer state and releases into ``context.state`` for its
    next message; ``releases_only``: only the releases (a message before the rounds, whose
    site was not restored, must not overwrite the rest)."""
    saved = _saved(context)
    before = dict(saved)
    budget = site.state.get("budget")
    if budget is not None and not releases_only:
        saved["budget"] = budget.state_dict()
    if isinstance(site.trainer, KeepsState) and not releases_only:
        saved["trainer"] = site.trainer.state_dict()
    if site.state.get("record_releases"):
        saved["record_releases"] = list(site.state["record_releases"])
    if saved != before:
        context.state[STATE_KEY] = ConfigRecord({"json": json.dumps(saved, sort_keys=True)})

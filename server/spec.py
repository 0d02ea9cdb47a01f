"""What a run is given and what it gives back: the server's spec, site and round summaries.

`ServerSpec` is everything the run needs besides Flower's Grid; `SiteInfo` is what the
handshake learned about one site; `RoundSummary` is one round's outcome for progress
displays and ``metrics.json``; `RunResult` is what a finished run returns. They live here,
apart from the orchestrator (`fedsilo.server.loop`, which re-exports them), so that the
handshake and the round modules can use them without importing the orchestrator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.common.errors import FedsiloError
from fedsilo.server.config import RunConfig
from fedsilo.strategies.batch import UpdateBatch


class FederationError(FedsiloError, RuntimeError):
    """The federation cannot start or continue (not enough sites, refused policies...)."""


class MonitorStop(Exception):
    """An error flag under ``[monitor] on_error = "stop"``: end the run cleanly, naming it."""


class BudgetExhausted(Exception):
    """The next round would exceed the privacy budget: end the run cleanly."""

    def __init__(self, reason: str, epsilon_spent: float) -> None:
        super().__init__(reason)
        self.epsilon_spent = epsilon_spent


@dataclass
class SiteInfo:
    """What the handshake told the server about one site."""

    site_id: str
    node_id: int
    public_key: str
    data_fingerprint: str
    policy: str
    num_examples: int = 0
    """The example count the site declared (and signed) at the handshake: the bound of
    every count it reports in a round (0 only for a SiteInfo built outside a handshake)."""
    declaration: str = ""
    """The site's signature over (run id, site id, data fingerprint, count), kept in the
    genesis record so that a verifier can check the declaration long after the run."""
    app_digest: str = ""
    """Content digest of the app bundle the site checked and runs (its code policy's
    `fedsilo.client.app_code`), empty for a site that does not report one."""
    profile: dict[str, np.ndarray] | None = None
    """The site's data profile from its handshake reply (`fedsilo.server.data_profiles`)."""


@dataclass
class RoundSummary:
    """One round's outcome, for progress displays and ``metrics.json``."""

    round: int
    status: str
    sampled: int
    replied: int
    accepted: int
    rejected: dict[str, str]
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    wall_time: float
    model_digest: str
    epsilon: float | None = None
    reason: str | None = None
    site_eval: dict[str, Any] | None = None
    """The sampled sites' scores of the round's model on their own held-out splits, with
    mean and worst site (`fedsilo.server.site_eval.summarise`); None: not evaluated."""
    flags: list[dict[str, Any]] = field(default_factory=list)
    """The monitor's flags of this round (`fedsilo.governance.flags.Flag` dicts)."""


@dataclass
class ServerSpec:
    """Everything the round loop needs besides the Grid.

    Parameters
    ----------
    config : the resolved run config.
    run_id : lineage run id.
    initial_weights : the initial global model, named layers.
    run_dir : where lineage, checkpoints and keys go (None: nothing written).
    federation : small config sent with every message (simulated sites build
        their data from it).
    evaluate_fn : central evaluation of a model: named layers -> (loss, accuracy).
    attack_fn : simulation only; rewrites malicious sites' updates (round, batch).
    root_update_fn : FLTrust's server update on its root dataset (weights, round).
    on_round : called after every round (progress display).
    server_key_path : the server's Ed25519 key (created 0600 if missing).
    expected_sites : wait for this many nodes before the handshake.
    node_wait_timeout : seconds to wait for ``expected_sites`` nodes to connect.
    resume : continue the run in ``run_dir`` from its last checkpoint (after a crash).
    simulation : a simulated federation (seeded DP noise unless configured otherwise).
    task_identity : the task's `fedsilo.tasks.TaskIdentity` as a dict: every site must
        present the same at the handshake; recorded in genesis (None: not checked).
    frozen_layers : layers of ``initial_weights`` the sites neither send back nor the
        server aggregates (they stay as initialised).
    statistics : ask every site for the task's statistics before round 1 and send their
        sum with every train and evaluate message (`fedsilo.server.task_round`).
    profile : ask every site for its data profile for the drift check
        (`fedsilo.server.data_profiles`).
    baseline : the ``--baseline`` run's profiles (`fedsilo.governance.baseline.load_baseline`).
    """

    config: RunConfig
    run_id: str
    initial_weights: dict[str, np.ndarray]
    run_dir: Path | None = None
    federation: dict[str, Any] = field(default_factory=dict)
    evaluate_fn: Callable[[dict[str, np.ndarray]], tuple[float, float]] | None = None
    attack_fn: Callable[[int, UpdateBatch], UpdateBatch] | None = None
    root_update_fn: Callable[[dict[str, np.ndarray], int], np.ndarray] | None = None
    on_round: Callable[[RoundSummary], None] | None = None
    server_key_path: Path | None = None
    expected_sites: int | None = None
    node_wait_timeout: float = 120.0
    resume: bool = False
    simulation: bool = True
    task_identity: dict[str, str] | None = None
    frozen_layers: tuple[str, ...] = ()
    statistics: bool = False
    profile: bool = False
    baseline: dict[str, Any] | None = None
    evaluate_only: bool = False
    """``fedsilo evaluate``: no training; every site scores ``initial_weights`` once."""


@dataclass
class RunResult:
    """What a finished run produced.

    ``rounds`` are the rounds this process ran (the runner merges a resumed run's earlier
    ones from ``rounds.jsonl``); ``closing_reason`` is the run's status (see
    `fedsilo.server.outcome`), ``detail`` the closing record's detail (the progress made),
    ``rounds_changed`` the rounds of the whole run that changed the model.
    """

    rounds: list[RoundSummary]
    final_weights: dict[str, np.ndarray]
    final_digest: str
    closing_reason: str
    sites: list[SiteInfo]
    detail: str = ""
    rounds_changed: int = 0

"""One store for a run: the signed lineage chain, the round checkpoint, the final model.

Everything a run writes to its directory goes through `RunStore`, in an order that
keeps a crash (SIGKILL at any `fedsilo.server.faults` point) resumable:

* `commit_round` writes round r's checkpoint atomically (it carries the round's record),
  then appends the record. A crash before the checkpoint re-runs the round; a crash
  after it re-appends the record from the checkpoint on resume. Either way the chain
  holds each round once. It runs synchronously, on the round's thread: the checkpoint
  holds exactly the state of its own round (an earlier background writer once let the
  next round's sampling draw leak into it), and the commit is 1-2% of a default round's
  time (measured for issue 21), far less than a writer thread would have to hide to matter.
* `save_final_model` writes ``model.npz`` before `close` appends the closing record, so
  a closed chain always has its model on disk.
* `reopen` (resume) reads the checkpoint, appends the record a crash left pending and a
  resume record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo import lineage
from fedsilo.server.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    read_checkpoint,
    write_checkpoint,
    write_model,
)
from fedsilo.server.faults import fault_point
from fedsilo.server.spec import FederationError


@dataclass
class Reopened:
    """What a resumed run learns from its directory besides the checkpoint.

    rounds_completed: round records with status ``completed`` now in the chain.
    recovered_summary: the `RoundSummary` fields of the round whose record the crash
        left pending (appended now), None if there was none.
    round_bodies: the chain's round record bodies, the recovered one included.
    """

    rounds_completed: int = 0
    recovered_summary: dict[str, Any] | None = None
    round_bodies: list[dict[str, Any]] = field(default_factory=list)


class RunStore:
    """The run directory's checkpoint, lineage chain and final model, behind one object.

    Parameters
    ----------
    run_dir : the run directory (None: nothing is written; rounds still run).
    lineage_on : whether the run keeps a lineage chain (``RunConfig.lineage``).
    server_key_path : the server's Ed25519 key (default ``run_dir/keys/server.pem``).
    """

    def __init__(self, run_dir: Path | None, *, lineage_on: bool,
                 server_key_path: Path | None = None) -> None:
        self.run_dir = run_dir
        self.lineage_on = lineage_on
        self.server_key_path = server_key_path
        self.run_id = ""  # set by the server at genesis (or read back on resume)
        self.writer: Any = None  # a `lineage.LineageWriter` (or a test's stand-in)
        self.server_key: Any = None
        # the model digest the chain's last record leaves current (what a closing record
        # must name): a round interrupted after its step but before its record leaves
        # the live model ahead of the chain, and is re-run on resume
        self.chain_model: str | None = None
        # site id -> the digest of its last chained attestation the chain records: what the
        # site's next plain round config carries as its `attestation_prev`
        self.attestations: dict[str, str] = {}

    def attestation_prev(self, site_id: str) -> str:
        """The prev ``site_id`` chains its next attestation onto (genesis for its first)."""
        return self.attestations.get(site_id, lineage.GENESIS_ATTESTATION)

    def remember_attestations(self, run_id: str, body: dict[str, Any]) -> None:
        """Advance each site's chain head past the chained contributions of a round
        record's ``body`` (its dict form), in chain order."""
        for c in body["contributions"]:
            if c.get("prev") is not None:
                self.attestations[c["site_id"]] = lineage.attestation_digest(
                    lineage.contribution_message(run_id, body["round"], c["update_digest"],
                                                 c["data_fingerprint"], c["prev"]))

    @property
    def db_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "lineage.sqlite"

    # ------------------------------------------------------------ a new run
    def open(self) -> None:
        """A new run: load (or create) the server key and create the chain."""
        if self.server_key_path is not None:
            self.server_key = lineage.load_or_create_key(self.server_key_path)
        if self.run_dir is None or not self.lineage_on:
            return
        if self.server_key is None:
            self.server_key = lineage.load_or_create_key(self.run_dir / "keys" / "server.pem")
        self.writer = lineage.LineageWriter.create(self.db_path, self.server_key)

    def server_key_fingerprint(self) -> str:
        """The fingerprint the sites get in every round config ("" without a key)."""
        if self.server_key is None:
            return ""
        return lineage.key_fingerprint(lineage.public_key_hex(self.server_key))

    def append(self, record: Any) -> None:
        """Append ``record`` to the chain (nothing without one)."""
        if self.writer is not None:
            self.writer.append(record)

    # ------------------------------------------------------------ a round
    def commit_round(self, server_round: int, record: Any, checkpoint: Checkpoint | None) -> None:
        """Round ``server_round`` on disk: its checkpoint (atomic, carrying ``record``),
        then ``record`` in the chain."""
        fault_point("before_checkpoint", server_round)
        if checkpoint is not None and self.run_dir is not None:
            write_checkpoint(self.run_dir, checkpoint)
        fault_point("before_lineage", server_round)
        if self.writer is not None:
            self.writer.before_commit = lambda _type: fault_point("lineage_write", server_round)
        self.append(record)
        self.chain_model = record.model_out
        if self.run_id:
            self.remember_attestations(self.run_id, record.to_dict())

    # ------------------------------------------------------------ the end
    def save_final_model(self, weights: dict[str, np.ndarray], last_round: int) -> None:
        """Write ``model.npz`` atomically (before the closing record: see the module)."""
        fault_point("before_model", last_round)
        if self.run_dir is not None:
            write_model(self.run_dir, weights)
        fault_point("before_closing", last_round)

    def close(self, reason: str, detail: str, rounds_completed: int, model_digest: str,
              epsilon_spent: float | None) -> None:
        """Append the closing record (unless the run failed before its genesis) and close
        the chain. ``model_digest``: the live model's, used only if no record named one."""
        if self.writer is None:
            return
        if self.writer.head is None:  # the run failed before its genesis: nothing to close
            self.writer.close()
            return
        try:
            self.writer.append(lineage.ClosingRecord(
                reason=reason, detail=detail, rounds_completed=rounds_completed,
                final_model_digest=self.chain_model or model_digest,
                epsilon_spent=epsilon_spent,
            ))
        finally:
            self.writer.close()

    # ------------------------------------------------------------ resume
    def read_checkpoint(self, model_size: int) -> Checkpoint:
        """The last checkpoint, checked against this run's model size."""
        if self.run_dir is None:
            raise FederationError("resume needs a run directory")
        if not (self.run_dir / CHECKPOINT_NAME).exists():
            raise FederationError(f"{self.run_dir} has no checkpoint to resume from")
        ckpt = read_checkpoint(self.run_dir)
        if ckpt.model.size != model_size:
            raise FederationError(
                f"checkpoint model has {ckpt.model.size} values; this run's model has {model_size}"
            )
        return ckpt

    def reopen(self, ckpt: Checkpoint, model_digest: str) -> Reopened:
        """Reopen the chain after a crash: append the round record the checkpoint holds
        if the chain lacks it, then a resume record. ``model_digest``: the checkpoint's
        model (what the chain leaves current)."""
        if not self.lineage_on or self.run_dir is None:
            return Reopened()
        self.server_key = lineage.load_or_create_key(
            self.server_key_path or self.run_dir / "keys" / "server.pem"
        )
        self.writer = lineage.LineageWriter.open(self.db_path, self.server_key)
        bodies = [r["body"] for r in lineage.read_chain(self.db_path) if r["type"] == "round"]
        out = Reopened(rounds_completed=sum(b["status"] == "completed" for b in bodies),
                       round_bodies=bodies)
        last = bodies[-1]["round"] if bodies else 0
        pending = ckpt.extra.get("pending_record")
        if last < ckpt.round and pending is not None:
            record = lineage.RoundRecord.from_dict(pending)
            self.writer.append(record)
            out.rounds_completed += record.status == "completed"
            out.recovered_summary = ckpt.extra.get("summary") or None
            bodies.append(record.to_dict())
        self.chain_model = model_digest
        chain = lineage.read_chain(self.db_path)
        self.run_id = chain[0]["body"]["run_id"] if chain else self.run_id
        self.attestations = {}  # rebuilt from the chain: every round record, superseded too
        for body in bodies:
            self.remember_attestations(self.run_id, body)
        self.writer.append(lineage.ResumeRecord(
            resumed_at=now(), from_round=ckpt.round,
            reason="server restarted after an interruption; continuing from the last checkpoint",
        ))
        return out

    def genesis_keys(self) -> dict[str, str] | None:
        """Site id -> public key as the genesis record names them (None: no chain)."""
        if self.run_dir is None or not self.lineage_on:
            return None
        genesis = lineage.read_chain(self.db_path)[0]["body"]
        return {s["site_id"]: s["public_key"] for s in genesis["sites"]}


def now() -> str:
    """UTC now, as lineage records state times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

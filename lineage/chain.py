"""Loading a run's chain as validated records for the query commands (read-only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LineageError
from .records import validate_body
from .runs import RunPaths, locate_run
from .store import read_chain


@dataclass
class LoadedChain:
    """A run's chain with bodies checked against their schemas (not verified: no digests or
    signatures are checked; use :func:`fedsilo.lineage.verify_run` for that).

    Attributes:
        run: the run's paths.
        envelopes: every envelope in order.
        genesis: the genesis body.
    """

    run: RunPaths
    envelopes: list[dict[str, Any]]
    genesis: dict[str, Any]

    def of_type(self, record_type: str) -> list[dict[str, Any]]:
        """Envelopes of one type, in chain order."""
        return [e for e in self.envelopes if e["type"] == record_type]

    @property
    def closing(self) -> dict[str, Any] | None:
        """The closing body, if the chain is closed."""
        last = self.envelopes[-1]
        return last["body"] if last["type"] == "closing" else None

    def current_model(self) -> str:
        """The model the chain ends with, following resumes (the default target)."""
        initial = current = self.genesis["initial_model_digest"]
        after_round: dict[int, str] = {}
        for env in self.envelopes:
            body = env["body"]
            if env["type"] == "round":
                if body["status"] == "completed":
                    current = body["model_out"]
                after_round[body["round"]] = current
            elif env["type"] == "resume":
                k = body["from_round"]
                current = after_round.get(k, initial)
                after_round = {r: m for r, m in after_round.items() if r <= k}
        return current


def load_chain(run_dir: Path) -> LoadedChain:
    """Read and schema-check a run's chain.

    Raises:
        LineageError: if the store is unreadable, empty, does not start with genesis, or a
            record is malformed (the message names the record and suggests ``verify``).
    """
    run = locate_run(run_dir)
    envelopes = read_chain(run.db_path)
    if not envelopes:
        raise LineageError(f"{run.db_path}: the chain is empty")
    for i, env in enumerate(envelopes):
        rtype = env.get("type")
        try:
            if (i == 0) != (rtype == "genesis"):
                raise ValueError("genesis must be the first and only the first record")
            validate_body(str(rtype), env.get("body"))
        except ValueError as exc:
            raise LineageError(
                f"{run.db_path}: record {i} ({rtype}) is malformed: {exc} "
                "(run `fedsilo lineage verify`)"
            ) from None
    return LoadedChain(run, envelopes, envelopes[0]["body"])

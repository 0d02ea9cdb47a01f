"""A run directory's outputs, for the deployed ServerApp and simulations alike.

A run directory (``<out>/<run-id>/``) holds ``config.toml`` (the resolved config),
``lineage.sqlite`` (signed chain), ``checkpoint.npz``, ``rounds.jsonl`` (each round's
summary, once per round, kept across crashes: `round_logger`), and, once the run has
finished, ``model.npz``, ``metrics.json`` and ``report.html`` (`write_outputs`). The server
writes ``model.npz`` (atomically) before the closing record; ``metrics.json`` and then
``report.html`` come after it, so a directory without ``report.html`` is not a finished
run, and a resume finishes its outputs (`closed_run`, `finish_outputs`). A simulation
writes them while its engine shuts down (`OutputsDuringShutdown`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsilo import lineage
from fedsilo.server.app import ServerOutcome
from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.server.loop import RoundSummary, RunResult, SiteInfo

if TYPE_CHECKING:
    from fedsilo.server.loop import ServerSpec


def closed_run(run_dir: Path, config: RunConfig) -> dict[str, Any] | None:
    """The closing record's body when the chain of ``run_dir`` says the run is over
    (completed, no_progress, budget_exhausted), else None."""
    from fedsilo.server.outcome import FINISHED

    db = run_dir / "lineage.sqlite"
    if not config.lineage or not db.exists():
        return None
    chain = lineage.read_chain(db)
    if chain and chain[-1]["type"] == "closing" and chain[-1]["body"]["reason"] in FINISHED:
        return dict(chain[-1]["body"])
    return None


def finish_outputs(run_dir: Path, config: RunConfig, spec: ServerSpec,
                   label_counts: dict[str, list[int]] | None = None) -> RunResult:
    """Write what a crash after the closing record left out: ``model.npz`` (from the
    checkpoint, checked against the closing record's digest), ``metrics.json`` and
    ``report.html`` (from ``rounds.jsonl`` and the chain).

    ``spec``: the run's server spec (its initial model and frozen layers give the
    checkpoint's layout); ``label_counts`` as for `write_outputs`.
    """
    from fedsilo.server.checkpoint import MODEL_NAME, read_checkpoint, write_model
    from fedsilo.server.outcome import RunProgress
    from fedsilo.server.task_round import ModelParts

    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    closing = chain[-1]["body"]
    expected = closing["final_model_digest"]
    parts = ModelParts.split(spec.initial_weights, spec.frozen_layers)
    weights = _saved_model(run_dir / MODEL_NAME)
    if weights is None or lineage.arrays_digest(weights) != expected:
        weights = parts.weights(read_checkpoint(run_dir).model.astype(np.float32))
        if lineage.arrays_digest(weights) != expected:
            raise ConfigError(f"--resume: {run_dir}: the checkpoint's model is not the final model "
                              f"{expected} of the closing record; cannot finish the outputs")
        write_model(run_dir, weights)
    genesis = chain[0]["body"]
    declares = "num_examples" in {f.name for f in fields(SiteInfo)}  # the handshake's count
    sites = [SiteInfo(site_id=s["site_id"], node_id=0, public_key=s["public_key"],
                      data_fingerprint=s["data_fingerprint"], policy=json.dumps(s["policy"]),
                      **({"num_examples": s.get("num_examples")} if declares else {}))
             for s in genesis["sites"]]
    progress = RunProgress.from_bodies([r["body"] for r in chain if r["type"] == "round"])
    result = RunResult([], weights, expected, closing["reason"], sites,
                       detail=closing["detail"], rounds_changed=progress.changed)
    return write_outputs(run_dir, config, result, label_counts)


def _saved_model(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError):  # a torn or foreign file: rewritten from the checkpoint
        return None


def round_logger(run_dir: Path, user_hook: Callable[[RoundSummary], None] | None
                 ) -> Callable[[RoundSummary], None]:
    """The ``on_round`` hook that appends each round's summary to ``rounds.jsonl`` once
    (a resume re-announces the round its crash interrupted), then calls ``user_hook``."""
    log = run_dir / "rounds.jsonl"
    seen = set(_read_round_log(log))

    def on_round(summary: RoundSummary) -> None:
        if summary.round not in seen:
            # rounds.jsonl survives a crash, so metrics.json of a resumed run has every round
            with log.open("a") as fh:
                fh.write(json.dumps(asdict(summary)) + "\n")
            seen.add(summary.round)
        if user_hook is not None:
            user_hook(summary)

    return on_round


def prune_round_log(run_dir: Path, last_round: int) -> None:
    """Before a resume: keep each round up to the checkpoint's once; later rounds (logged
    before the crash lost their checkpoint) run again and are logged again."""
    log = run_dir / "rounds.jsonl"
    if not log.exists():
        return
    kept = [e for r, e in sorted(_read_round_log(log).items()) if r <= last_round]
    tmp = log.with_name(".rounds.jsonl.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
    tmp.replace(log)


def _read_round_log(log: Path) -> dict[int, dict[str, Any]]:
    """Round number -> its last logged summary (a torn last line, from a crash, is skipped)."""
    out: dict[int, dict[str, Any]] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "round" in entry:
            out[int(entry["round"])] = entry
    return out


def resumed_from(run_dir: Path, config: RunConfig) -> list[int]:
    """The checkpoint round each resume of the run continued from (from its chain)."""
    db = run_dir / "lineage.sqlite"
    if not config.lineage or not db.exists():
        return []
    return [int(r["body"]["from_round"]) for r in lineage.read_chain(db) if r["type"] == "resume"]


class OutputsDuringShutdown(ServerOutcome):
    """A `ServerOutcome` that starts writing the run's outputs (``metrics.json``, then
    ``report.html``: `write_outputs`) the moment the ServerApp hands over its result, in
    a thread, while the engine shuts down (Flower's teardown and Ray's shutdown take
    seconds; the report's plots about one), instead of after it.

    The ServerApp hands its result over only after ``model.npz`` and the closing record
    are on disk (`FederationServer.run`), and `write_outputs` checks ``model.npz`` against
    the final digest, so the outputs never run ahead of the model and its lineage. Both
    output files are replaced atomically; a process stopped meanwhile leaves the run
    without ``report.html`` (not finished), which ``--resume`` finishes. `wait` gives the
    writer's result or raises its error.

    Parameters
    ----------
    run_dir, config : the run's directory and resolved config (as for `write_outputs`).
    label_counts : gives `write_outputs`'s ``label_counts`` (called in the writer's thread).
    """

    def __init__(self, run_dir: Path, config: RunConfig,
                 label_counts: Callable[[], dict[str, list[int]] | None]) -> None:
        super().__init__()
        self._args = (run_dir, config, label_counts)
        self._written: RunResult | None = None
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._result: RunResult | None = None

    @property  # type: ignore[override]
    def result(self) -> RunResult | None:
        return self._result

    @result.setter
    def result(self, value: RunResult | None) -> None:
        self._result = value
        if value is not None and self._thread is None:
            # a daemon: a signal's quick exit never waits on a plot
            self._thread = threading.Thread(target=self._write, args=(value,),
                                            name="fedsilo-outputs", daemon=True)
            self._thread.start()

    def _write(self, result: RunResult) -> None:
        run_dir, config, label_counts = self._args
        try:
            self._written = write_outputs(run_dir, config, result, label_counts())
        except BaseException as exc:  # handed to `wait`, raised in the caller's thread
            self._failed = exc

    def wait(self) -> RunResult:
        """The result with every round, once the outputs are written (their error if not)."""
        assert self._thread is not None and self._result is not None
        self._thread.join()
        if self._failed is not None:
            raise self._failed
        assert self._written is not None
        return self._written


def write_outputs(run_dir: Path, config: RunConfig, result: RunResult,
                  label_counts: dict[str, list[int]] | None = None) -> RunResult:
    """Write ``metrics.json``, then ``report.html`` (last: it marks a finished run), for
    the whole run; return ``result`` with ``rounds`` covering every round once.

    ``model.npz`` is the server's (written before the closing record); it is checked
    here against the final digest. ``label_counts``: a simulation's examples per label at
    each site, for the report's sites' data chart; None (a deployment): the chart shows
    the sites of the handshake with the example counts they declared.
    """
    with np.load(run_dir / "model.npz", allow_pickle=False) as saved:
        if lineage.arrays_digest(dict(saved)) != result.final_digest:
            raise RuntimeError(f"{run_dir / 'model.npz'} does not match the final model digest")
    result = replace(result, rounds=whole_run_rounds(run_dir, config, result.rounds))
    metrics = {
        "run_id": config.run_id,
        "final_model_digest": result.final_digest,
        "closing_reason": result.closing_reason,
        "closing_detail": result.detail,
        "rounds_changed": result.rounds_changed,
        "resumed_from": resumed_from(run_dir, config),
        # the sites' scores of the last model they evaluated (per site, mean, worst site)
        "site_evaluation": next((r.site_eval for r in reversed(result.rounds) if r.site_eval),
                                None),
        "rounds": [asdict(r) for r in result.rounds],
    }
    tmp = run_dir / ".metrics.json.tmp"  # atomically: a reader never sees half a file
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(run_dir / "metrics.json")
    from fedsilo.server.report import write_report

    if label_counts is not None:
        write_report(run_dir / "report.html", config, result, label_counts,
                     resumed_from=metrics["resumed_from"])
    else:
        declared = {s.site_id: getattr(s, "num_examples", None) for s in result.sites}
        write_report(run_dir / "report.html", config, result, declared_counts=declared,
                     resumed_from=metrics["resumed_from"])
    return result


def whole_run_rounds(run_dir: Path, config: RunConfig,
                     ran: list[RoundSummary]) -> list[RoundSummary]:
    """Every round of the run once, in order: this process's rounds, then ``rounds.jsonl``
    (rounds run before a resume), then the chain's round records for any still missing."""
    by_round: dict[int, RoundSummary] = {}
    db = run_dir / "lineage.sqlite"
    if config.lineage and db.exists():
        for env in lineage.read_chain(db):
            if env["type"] == "round":
                by_round[int(env["body"]["round"])] = _summary_of_record(env["body"])
    names = {f.name for f in fields(RoundSummary)}
    for r, entry in _read_round_log(run_dir / "rounds.jsonl").items():
        by_round[r] = RoundSummary(**{k: v for k, v in entry.items() if k in names})
    for summary in ran:
        by_round[summary.round] = summary
    return [by_round[r] for r in sorted(by_round)]


def _summary_of_record(body: dict[str, Any]) -> RoundSummary:
    from fedsilo.server import site_eval
    from fedsilo.server.outcome import body_accepted

    m = body.get("metrics") or {}
    return RoundSummary(
        round=int(body["round"]), status=body["status"], sampled=len(body["sampled"]),
        replied=len(body["replied"]),
        accepted=body_accepted(body) if body["status"] == "completed" else 0,
        rejected=dict(body["rejected"]), train_loss=m.get("train_loss"),
        test_loss=m.get("test_loss"), test_accuracy=m.get("test_accuracy"),
        wall_time=float((body.get("timings") or {}).get("total", 0.0)),
        model_digest=body["model_out"], epsilon=m.get("epsilon"), reason=body.get("reason"),
        site_eval=site_eval.summarise(body.get("evaluations") or []),
    )

"""``fedsilo simulate --mlflow URI``: the run in MLflow as it goes.

`LiveMlflowRun` opens (and probes) the tracking store before the run starts, so a store
that cannot be used stops the command before anything is written. Each round's summary
is logged when the round is recorded (`on_round`, the same per-round metrics as
``fedsilo export mlflow``: central metrics, accepted / rejected / dropped, each site's
score as ``site.<site_id>.<metric>``). At the end `finish` verifies the run and logs what
``export mlflow`` logs besides the metrics (parameters, tags, model, report, card, PROV);
a run whose chain does not verify, or that did not complete, ends ``FAILED`` in MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .mlflow_export import experiment_id, log_record, open_client
from .run_facts import GovernanceError, read_run_facts


class LiveMlflowRun:
    """One MLflow run fed by a simulation (see the module docstring).

    Args:
        tracking_uri: the MLflow tracking URI.
        experiment: the experiment's name (created when missing).
    """

    def __init__(self, tracking_uri: str, experiment: str = "fedsilo") -> None:
        self.client = open_client(tracking_uri)
        self.run_id = self.client.create_run(
            experiment_id(self.client, experiment, tracking_uri)).info.run_id

    def on_round(self, summary: Any) -> None:
        """Log one round's `RoundSummary` (step = its round number)."""
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(summary.round)
        values = {"accepted": summary.accepted, "rejected": len(summary.rejected or {}),
                  "dropped": summary.sampled - summary.replied}
        if summary.status == "completed":
            values.update(train_loss=summary.train_loss, test_loss=summary.test_loss,
                          test_accuracy=summary.test_accuracy, epsilon=summary.epsilon)
        for site, scores in ((summary.site_eval or {}).get("sites") or {}).items():
            values.update({f"site.{site}.{k}": v for k, v in scores.items()
                           if k != "num_examples"})
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: Path | None, outcome: str) -> str:
        """Log the verified run's record and end the MLflow run; returns its final status."""
        status = "FINISHED" if outcome == "completed" else "FAILED"
        try:
            if run_dir is not None:
                facts = read_run_facts(run_dir)
                self.client.set_tag(self.run_id, "mlflow.runName", str(facts.genesis["run_id"]))
                log_record(self.client, self.run_id, facts)
        except GovernanceError as exc:
            self.client.set_tag(self.run_id, "fedsilo.verified", f"FAILED: {exc}"[:5000])
            status = "FAILED"
        self.client.set_terminated(self.run_id, status)
        return status

"""``fedsilo export mlflow RUN_DIR``: a verified run, logged to MLflow with its own client.

What one fedsilo run becomes in MLflow (one MLflow run in the named experiment):

* **parameters**: the resolved run config from genesis, nested tables flattened with dots
  (``dp.enabled``, ``secagg.clip_range``);
* **metrics** per round (``step`` = round): the central metrics of each round that changed
  the model, ``accepted`` / ``rejected`` / ``dropped`` counts, and each site's signed score
  of the round's model as ``site.<site_id>.<metric>``;
* **tags**: ``fedsilo.run_id``, ``fedsilo.chain_head``, ``fedsilo.model_digest``,
  ``fedsilo.server_key``, ``fedsilo.verified`` (the verifier's summary),
  ``fedsilo.outcome``, ``fedsilo.flags`` (their count) and one ``fedsilo.flag.<n>`` per flag;
* **artifacts**: ``model.npz``, ``report.html`` (when present), the model card (Markdown and
  HTML) and the PROV-JSON export of the chain;
* with ``register``: a registered model version whose source is the logged ``model.npz``
  and whose description names the fedsilo run, its chain head and the MLflow run.

The run is verified first (`read_run_facts`) and the tracking store is probed before
anything is logged; when logging fails half-way the MLflow run is deleted, so an
experiment never shows a half-exported run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fedsilo.lineage import export_prov_json

from .card import render_card
from .run_facts import GovernanceError, RunFacts, read_run_facts

_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics, 100 params, 100 tags per call
_PARAM_MAX = 6000  # MLflow's limit on a parameter value


@dataclass(frozen=True)
class Exported:
    """Where a run went: the MLflow run id, its experiment id and the registered version."""

    mlflow_run_id: str
    experiment_id: str
    model_version: str | None


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value as text) of a nested config, keys in sorted order."""
    for key in sorted(config):
        value = config[key]
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", str(value)[:_PARAM_MAX]


def round_metrics(facts: RunFacts) -> Iterator[tuple[str, float, int]]:
    """(name, value, round) of every per-round metric (see the module docstring)."""
    for body in facts.rounds:
        step = int(body["round"])
        for key in ("accepted", "dropped"):
            yield key, float(len(body.get(key) or [])), step
        yield "rejected", float(len(body.get("rejected") or {})), step
        if body.get("status") == "completed":
            for name, value in (body.get("metrics") or {}).items():
                if isinstance(value, int | float):
                    yield str(name), float(value), step
        for ev in body.get("evaluations") or []:
            site = str(ev["site_id"])
            yield f"site.{site}.loss", float(ev["loss"]), step
            for name, value in (ev.get("metrics") or {}).items():
                yield f"site.{site}.{name}", float(value), step


def run_tags(facts: RunFacts) -> dict[str, str]:
    closing = facts.closing or {}
    tags = {"fedsilo.run_id": str(facts.genesis["run_id"]), "fedsilo.chain_head": facts.chain_head,
            "fedsilo.model_digest": facts.final_model, "fedsilo.server_key": facts.server_key,
            "fedsilo.verified": facts.verify_summary[:5000],
            "fedsilo.outcome": str(closing.get("reason", "running")),
            "fedsilo.flags": str(len(facts.flags))}
    for n, flag in enumerate(facts.flags):
        tags[f"fedsilo.flag.{n}"] = (f"round {flag.get('round')} {flag.get('severity')} "
                                     f"{flag.get('code')} site={flag.get('site')}")
    return tags


def open_client(tracking_uri: str | None) -> Any:
    """An `MlflowClient` on ``tracking_uri``, probed; unreachable stores fail in seconds."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise GovernanceError("MLflow is not installed: pip install 'fedsilo[mlflow]' "
                              "(mlflow-skinny with the SQLite backend)") from None

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many kinds; all mean "cannot use this store"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GovernanceError(f"--tracking-uri {tracking_uri or '(default)'}: the MLflow "
                              f"tracking store cannot be used ({first})") from None
    return client


def experiment_id(client: Any, name: str, tracking_uri: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        # next to the store, not in whatever directory the command runs from
        store = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        location = (store.parent / "mlartifacts").as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def export_run(run_dir: Path, *, tracking_uri: str | None = None,
               experiment: str = "fedsilo", register: str | None = None) -> Exported:
    """Verify ``run_dir`` and log it to MLflow (see the module docstring).

    Args:
        run_dir: a fedsilo run directory.
        tracking_uri: the MLflow tracking URI (``sqlite:///path/mlflow.db``, ``http://...``);
            None: MLflow's own default (``MLFLOW_TRACKING_URI``).
        experiment: the experiment's name (created when missing).
        register: also register the model under this name (a new version).

    Raises:
        GovernanceError: the run does not verify, or the store cannot be used.
    """
    facts = read_run_facts(run_dir)
    client = open_client(tracking_uri)
    exp_id = experiment_id(client, experiment, tracking_uri)
    run = client.create_run(exp_id, run_name=str(facts.genesis["run_id"]))
    run_id = run.info.run_id
    try:
        log_record(client, run_id, facts)
        log_metrics(client, run_id, facts)
        version = register_model(client, run_id, facts, register) if register else None
    except BaseException:
        client.delete_run(run_id)  # never leave a half-exported run visible
        raise
    client.set_terminated(run_id, "FINISHED")
    return Exported(run_id, exp_id, version)


def log_metrics(client: Any, run_id: str, facts: RunFacts) -> None:
    """Every per-round metric of the chain (see `round_metrics`), at the run's start time
    (genesis), so re-exports of one run log identical metrics."""
    from mlflow.entities import Metric

    created = datetime.fromisoformat(str(facts.genesis["created_at"]).replace("Z", "+00:00"))
    stamp = int(created.timestamp() * 1000)
    metrics = [Metric(name, value, stamp, step) for name, value, step in round_metrics(facts)]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH])


def log_record(client: Any, run_id: str, facts: RunFacts) -> None:
    """Parameters, tags and artifacts of a verified run (see the module docstring)."""
    from mlflow.entities import Param, RunTag

    params = [Param(k, v) for k, v in flatten(facts.config)]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    tags = [RunTag(k, v) for k, v in run_tags(facts).items()]
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i:i + 100])
    for name in ("model.npz", "report.html"):
        if (facts.run_dir / name).is_file():
            client.log_artifact(run_id, str(facts.run_dir / name))
    markdown, page = render_card(facts)
    with tempfile.TemporaryDirectory(prefix="fedsilo-mlflow-") as tmp:
        for name, text in (("model_card.md", markdown), ("model_card.html", page)):
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        export_prov_json(facts.run_dir, Path(tmp) / "lineage.prov.json")
        client.log_artifacts(run_id, tmp, artifact_path="governance")


def register_model(client: Any, run_id: str, facts: RunFacts, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower():
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model.npz"
    description = (f"fedsilo run {facts.genesis['run_id']} (MLflow run {run_id}); lineage chain "
                   f"head {facts.chain_head}, model {facts.final_model}; verify with "
                   f"`fedsilo lineage verify`.")
    version = client.create_model_version(name, source, run_id=run_id, description=description)
    return str(version.version)

"""The Task interface end to end: resolution, identity, handshake refusal, genesis,
init_model, frozen layers and the federated statistics query (in-process engine)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.simulations.config import SimulationConfig
from fedsilo.tasks import BUILTINS, SiteData, TaskError, TaskIdentity, resolve_task
from fedsilo.tasks.bundled import BundledTask

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `user_task` for every site

import user_task  # noqa: E402

# the bundled digits task's model layout: a change here changes every run's identity
DIGITS_LAYOUT = "sha256:df6f7009095784c43f08c5243733421323b6cc6dd38af6d9c1fa957cbb06621f"
SMALL = {"sites": 3, "rounds": 2, "partition": "iid", "seed": 3, "lr": 0.2}


def _run(tmp_path: Path, run_id: str, **options: Any) -> Any:
    from fedsilo.simulations.runner import run_federation

    cfg = SimulationConfig.load(None, {**SMALL, "out": str(tmp_path), "run_id": run_id, **options})
    return run_federation(cfg, engine="inprocess")


def _genesis(run: Any) -> dict[str, Any]:
    return lineage.read_chain(run.run_dir / "lineage.sqlite")[0]["body"]


def _saved(run: Any) -> dict[str, np.ndarray]:
    with np.load(run.run_dir / "model.npz") as data:
        return {k: data[k] for k in data.files}


# ------------------------------------------------------------------ resolution
def test_builtins_resolve_to_bundled_tasks() -> None:
    assert BUILTINS == ("digits", "breast_cancer", "wine", "mnist1d", "tabular", "torch")
    for name in ("digits", "breast_cancer", "wine"):
        task = resolve_task(name, {"hidden": 8})
        assert isinstance(task, BundledTask) and task.name == name
        assert task.initial_weights()["fc1.weight"].shape[0] == 8
    assert resolve_task("digits").identity().layout_digest == DIGITS_LAYOUT


@pytest.mark.parametrize("obj", ["TinyTask", "make_task"])
def test_module_object_builds_a_user_task(obj: str) -> None:
    task = resolve_task(f"user_task:{obj}", {"hidden": 6})
    assert isinstance(task, user_task.TinyTask) and task.hidden == 6
    assert resolve_task("user_task:INSTANCE") is user_task.INSTANCE


@pytest.mark.parametrize(("spec", "expected"), [
    ("mnist", "task: unknown task 'mnist'; built-in tasks: digits, breast_cancer, wine, "
              "mnist1d, tabular, torch; or name your own as 'module:object'"),
    ("no_such_module_x:T", "task 'no_such_module_x:T': cannot import module 'no_such_module_x' "
                           "(ModuleNotFoundError: No module named 'no_such_module_x')"),
    ("user_task:Missing", "task 'user_task:Missing': module 'user_task' has no attribute 'Missing'"),
    ("user_task:NOT_A_TASK", "task 'user_task:NOT_A_TASK': is a int, expected a Task, a Task "
                             "subclass or a function returning a Task"),
    ("user_task:returns_dict", "task 'user_task:returns_dict': returned dict, expected a "
                               "fedsilo.tasks.Task"),
])
def test_bad_task_specs_fail_in_one_line(spec: str, expected: str) -> None:
    with pytest.raises(TaskError) as err:
        resolve_task(spec, {})
    assert str(err.value) == expected


def test_a_module_that_fails_to_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_task_mod.py").write_text("import numpy\nraise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskError) as err:
        resolve_task("broken_task_mod:Task")
    assert str(err.value) == ("task 'broken_task_mod:Task': cannot import module 'broken_task_mod' "
                              "(RuntimeError: no GPU here)")


def test_cli_refuses_a_bad_task_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--task", "no_such_module_x:T", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot import module 'no_such_module_x'" in err, err
    assert not (tmp_path / "runs").exists()


def test_dataset_is_the_old_name_of_task() -> None:
    assert RunConfig.load(None, {"dataset": "wine"}).task == "wine"
    assert RunConfig.load(None, {"task": "user_task:TinyTask"}).dataset == "user_task:TinyTask"
    with pytest.raises(ConfigError, match="--dataset: 'wine' conflicts with --task 'digits'"):
        RunConfig.from_dict({"dataset": "wine", "task": "digits"})


# -------------------------------------------------------------------- identity
def test_identity_is_stable_and_sensitive_to_a_layer_change() -> None:
    a, b = resolve_task("user_task:TinyTask").identity(), resolve_task("user_task:make_task").identity()
    assert a == b and a.layout_digest.startswith("sha256:")
    assert TaskIdentity.from_dict(a.to_dict()) == a
    wider = resolve_task("user_task:TinyTask", {"hidden": 5}).identity()
    assert wider.schema_digest == a.schema_digest and wider.name == a.name
    assert a.differences(wider) == [f"layout_digest {a.layout_digest} != {wider.layout_digest}"]
    other_schema = resolve_task("user_task:TinyTask", {"standardise": True}).identity()
    assert a.differences(other_schema) == [
        f"schema_digest {a.schema_digest} != {other_schema.schema_digest}"]


def test_handshake_refuses_a_site_whose_task_differs() -> None:
    from fedsilo.client.app import make_client_app
    from fedsilo.client.task_site import task_site
    from fedsilo.server.app import ServerOutcome, make_server_app
    from fedsilo.server.loop import FederationError, ServerSpec
    from fedsilo.simulations.inprocess import run_in_process

    ours, theirs = user_task.TinyTask(), user_task.TinyTask({"hidden": 5})

    def site(context: Any, _federation: Any) -> Any:
        pid = int(context.node_config["partition-id"])
        data = SiteData(f"site-{pid:03d}", {"partition_id": pid})
        return task_site(theirs if pid == 2 else ours, data)

    cfg = SimulationConfig.load(None, {**SMALL, "task": "user_task:TinyTask", "run_id": "refuse"})
    spec = ServerSpec(config=cfg, run_id="refuse", initial_weights=ours.initial_weights(),
                      task_identity=ours.identity().to_dict())
    outcome = ServerOutcome()
    with pytest.raises(FederationError):
        run_in_process(make_server_app(lambda _c: spec, outcome), make_client_app(site), 3)
    a, b = ours.identity().layout_digest, theirs.identity().layout_digest
    assert re.fullmatch(rf"handshake: 2 of 3 sites answered \(node \d+ \(site-002\): task differs: "
                        rf"layout_digest {a} != {b}\)", str(outcome.error)), str(outcome.error)


def test_user_task_runs_and_genesis_carries_its_identity(tmp_path: Path) -> None:
    run = _run(tmp_path, "user", task="user_task:TinyTask", task_options={"hidden": 6})
    assert run.result.closing_reason == "completed"
    identity = resolve_task("user_task:TinyTask", {"hidden": 6}).identity().to_dict()
    assert _genesis(run)["task"] == identity
    report = lineage.verify_run(run.run_dir)
    assert report.ok, report
    assert run.rounds[-1].test_accuracy is None  # the user task gives the server no data


# ------------------------------------------------------------------ init_model
def _digits_weights(scale: float) -> dict[str, np.ndarray]:
    w = resolve_task("digits", {"hidden": 64, "seed": 3}).initial_weights()
    return {k: (np.full_like(v, scale) if k.endswith("bias") else v * scale) for k, v in w.items()}


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_init_model_from_file_is_the_initial_model(tmp_path: Path, suffix: str) -> None:
    weights = _digits_weights(0.5)
    path = tmp_path / f"pretrained{suffix}"
    if suffix == ".npz":
        np.savez(path, **weights)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, path)
    run = _run(tmp_path, f"init{suffix[1:]}", init_model=str(path), rounds=1)
    assert _genesis(run)["initial_model_digest"] == lineage.arrays_digest(weights)
    # the identity is the task's: a pretrained file does not change what sites must hold
    assert _genesis(run)["task"]["layout_digest"] == DIGITS_LAYOUT


def test_init_model_whose_layer_differs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _digits_weights(1.0)
    weights["fc2.weight"] = np.zeros((10, 32), np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **weights)
    out = tmp_path / "runs"
    assert main(["simulate", "--init-model", str(bad), "--seed", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"fedsilo simulate: error: --init-model: {bad}: layer 'fc2.weight' has shape (10, 32); "
                   "the task's model expects (10, 64)\n"), err
    assert not out.exists()
    del weights["fc2.weight"]
    np.savez(bad, **weights)
    cfg = RunConfig.load(None, {"init_model": str(bad), "run_id": "x"})
    from fedsilo.server.task_setup import server_task

    with pytest.raises(ConfigError) as exc:
        server_task(cfg)
    assert str(exc.value) == (f"--init-model: {bad}: layer 'fc2.weight' of the task's model is "
                              "missing (the file has fc1.weight, fc1.bias, fc2.bias)")


# --------------------------------------------------------------- frozen layers
def test_frozen_layers_stay_and_are_not_sent_back(tmp_path: Path) -> None:
    frozen = ["body.weight", "body.bias"]
    run = _run(tmp_path, "frozen", task="user_task:TinyTask", task_options={"frozen": frozen})
    assert run.result.closing_reason == "completed"
    assert all(r.accepted == 3 for r in run.rounds)
    start = user_task.TinyTask().initial_weights()
    final = _saved(run)
    assert list(final) == list(start)
    for name in frozen:
        np.testing.assert_array_equal(final[name], start[name])
    assert not np.array_equal(final["head.weight"], start["head.weight"])


def test_sdk_drops_frozen_layers_from_the_update() -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from fedsilo.client.app import local_delta
    from fedsilo.client.task_site import task_site
    from fedsilo.common import codec
    from fedsilo.server.task_round import ModelParts

    task = user_task.TinyTask()
    weights = task.initial_weights()
    parts = ModelParts.split(weights, ("body.weight", "body.bias"))
    flat = parts.trainable.flatten({k: weights[k] for k in parts.trainable.names})
    config = {"server_round": 1, "lr": 0.5, "local_epochs": 1, **parts.layout_config()}
    msg = Message(RecordDict({
        codec.GLOBAL_RECORD: ArrayRecord({codec.MODEL_KEY: codec.encode_flat(parts.wire(flat))}),
        codec.CONFIG_RECORD: ConfigRecord(config)}), dst_node_id=1, message_type="train")
    site = task_site(task, SiteData("site-000", {"partition_id": 0}))
    delta, n, _ = local_delta(site, msg, config)
    assert delta.size == parts.trainable.size == 4 * 2 + 2 < parts.full.size
    assert n == 20 and np.abs(delta).max() > 0


# ------------------------------------------------------------------ statistics
def test_statistics_query_sums_the_sites_exact_sums(tmp_path: Path) -> None:
    user_task.SEEN_STATISTICS.clear()
    run = _run(tmp_path, "stats", task="user_task:TinyTask", task_options={"standardise": True})
    assert run.result.closing_reason == "completed"
    rows = [user_task.site_rows(SiteData(f"site-{p:03d}", {"partition_id": p}, seed=3))[0]
            for p in range(3)]
    expected = {"count": np.array([float(sum(len(x) for x in rows))]),
                "sum": sum(x.astype(np.float64).sum(0) for x in rows),
                "sumsq": sum((x.astype(np.float64) ** 2).sum(0) for x in rows)}
    recorded = _genesis(run)["task"]["statistics"]
    assert recorded["sites"] == 3 and recorded["values"]["count"] == [20.0 + 27.0 + 34.0]
    for name, value in expected.items():
        np.testing.assert_allclose(recorded["values"][name], value, rtol=0, atol=1e-9)
    from fedsilo.tasks import statistics_digest

    got = {k: np.asarray(v) for k, v in recorded["values"].items()}
    assert recorded["digest"] == statistics_digest(got)
    # every site built its Trainer with the one summed dict
    assert len(user_task.SEEN_STATISTICS) == 3
    for seen in user_task.SEEN_STATISTICS:
        for name, value in got.items():
            np.testing.assert_array_equal(seen[name], value)
    assert json.loads(json.dumps(recorded)) == recorded


# ------------------------------------------------------------------ deployment
def test_site_toml_names_its_task_and_data(tmp_path: Path) -> None:
    import tomli_w

    from fedsilo.client.site_config import SiteConfigError, load_site

    doc = {"site_id": "hospital-a", "task": "user_task:TinyTask", "task_options": {"hidden": 6},
           "data": {"partition_id": 2, "seed": 3}, "key": "k.pem", "ledger": "ledger.jsonl",
           "supernode": {"insecure": True}}
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(doc))
    site = load_site(path)
    assert site.site_id == "hospital-a" and site.declared_examples == 34
    assert site.task_identity == resolve_task("user_task:TinyTask", {"hidden": 6}).identity().to_dict()
    doc["trainer"] = "deploy.fake_trainers:good"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SiteConfigError) as err:
        load_site(path)
    assert str(err.value) == (f"{path}: set either task (a built-in task or 'module:object') "
                              "or trainer ('module:function'), not both")
    del doc["trainer"]
    doc["task"] = "nosuch"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SiteConfigError, match=r"site.toml: task: unknown task 'nosuch'; built-in"):
        load_site(path)


def test_deployment_refuses_simulation_options_and_takes_the_tasks_model(tmp_path: Path) -> None:
    from fedsilo.server.flower_app import deployment_spec
    from fedsilo.server.task_setup import check_deployable

    with pytest.raises(ConfigError) as err:
        check_deployable(RunConfig.load(None, {"attack": "sign_flip", "malicious": 1}))
    assert str(err.value) == ("--config: attack = 'sign_flip' is a simulation option (fedsilo "
                              "simulate); a deployment's run config must not set it")
    cfg = RunConfig.load(None, {"task": "user_task:TinyTask", "task_options": {"frozen": ["body.bias"]},
                                "run_id": "dep", "out": str(tmp_path)})
    check_deployable(cfg)
    spec = deployment_spec(cfg, tmp_path / "dep")
    task = user_task.TinyTask({"frozen": ["body.bias"]})
    assert lineage.arrays_digest(spec.initial_weights) == lineage.arrays_digest(task.initial_weights())
    assert spec.task_identity == task.identity().to_dict() and spec.evaluate_fn is None
    assert spec.frozen_layers == ("body.bias",) and spec.statistics and not spec.simulation

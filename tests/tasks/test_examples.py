"""The shipped examples run from their own files (issue 20 point 5), in-process.

Each test copies ``examples/<name>/`` under ``tmp_path/examples/`` and runs there (the
examples' paths are relative to the repository root), generating data with the
example's own script; it then checks the per-site scores, lineage, and that the
example's ``site.toml`` files build sites with the server's task identity, which is what
the deployment's handshake compares.
"""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.client.site_config import build_site, read_site_config
from fedsilo.server.config import RunConfig
from fedsilo.server.task_setup import server_task
from fedsilo.tasks import SiteData, TaskError, resolve_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _copy(name: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(EXAMPLES / name, root / "examples" / name,
                    ignore=shutil.ignore_patterns("data", "runs", "__pycache__"))
    monkeypatch.chdir(root)
    return root / "examples" / name


def _simulate(config: Path, rounds: int, capsys: pytest.CaptureFixture[str]) -> Path:
    code = main(["simulate", "--config", str(config), "--rounds", str(rounds), "--engine",
                 "inprocess", "--out", "runs", "--run-id", "example", "--quiet"])
    assert code == 0, capsys.readouterr().err
    run_dir = Path("runs") / "example"
    report = lineage.verify_run(run_dir)
    assert report.ok, report.summary
    return run_dir


def _sites(run_dir: Path) -> dict[str, dict[str, float]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["closing_reason"] == "completed"
    return metrics["rounds"][-1]["site_eval"]["sites"]


def test_custom_torch_example_trains_the_users_cnn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    example = _copy("custom-torch", tmp_path, monkeypatch)
    run_dir = _simulate(example / "run.toml", 4, capsys)
    sites = _sites(run_dir)
    assert sorted(sites) == ["site-000", "site-001", "site-002"]
    # ten classes: chance is 0.1; four rounds of the CNN reach about 0.9 at every site (0.91-0.94)
    assert min(s["accuracy"] for s in sites.values()) > 0.8, sites
    genesis = lineage.read_chain(run_dir / "lineage.sqlite")[0]["body"]
    server = server_task(RunConfig.load(example / "run.toml"))
    assert genesis["task"]["name"] == "torch"
    assert {k: genesis["task"][k] for k in server.identity} == server.identity
    # a conv layer's weights: the model is the module's CNN, not fedsilo's MLP
    assert server.initial_weights["0.weight"].shape == (8, 1, 3, 3)
    # the same module at a deployed site: site.toml names it relative to itself
    site = build_site(read_site_config(example / "site.toml"))
    assert site.task_identity == server.identity
    assert site.declared_examples == 479  # 80 % of site 0's third of the 1797 images


def test_tabular_readmission_example_three_hospitals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    example = _copy("tabular-readmission", tmp_path, monkeypatch)
    runpy.run_path(str(example / "make_data.py"))["main"]([])
    files = {p.relative_to(example).as_posix() for p in example.rglob("*")
             if p.suffix in (".csv", ".parquet")}
    assert files == {"data/north.csv", "data/south.parquet", "data/east.csv",
                     "sites/north/admissions.csv", "sites/south/visits.parquet",
                     "sites/east/stays.csv"}
    run_dir = _simulate(example / "run.toml", 8, capsys)
    sites = _sites(run_dir)
    assert sorted(sites) == ["east", "north", "south"]
    for name, scores in sites.items():  # about 0.75 and 0.83 after 15 rounds
        assert scores["accuracy"] > 0.65 and scores["auroc"] > 0.75, (name, scores)
    # deployment: each hospital's own file and column names give the server's identity
    # (deploy/run.toml: the simulation's schema without data) and the same rows
    server = server_task(RunConfig.load(example / "deploy" / "run.toml"))
    genesis = lineage.read_chain(run_dir / "lineage.sqlite")[0]["body"]
    assert {k: genesis["task"][k] for k in server.identity} == server.identity
    declared = {s["site_id"]: s for s in genesis["sites"]}
    for name in ("north", "south", "east"):
        site = build_site(read_site_config(example / "sites" / name / "site.toml"))
        assert site.task_identity == server.identity, name
        assert site.declared_examples == declared[name]["num_examples"], name


# ------------------------------------------------------------------ the torch adapter
def _module(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"  # one name per body: a loaded file is not re-read
    path.write_text("import torch\nfrom torch import nn\n" + body)
    return str(path)


def test_torch_task_bad_modules_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"task 'torch': .*task_options.module is missing"):
        resolve_task("torch", {})
    only_model = _module(tmp_path, "only_model", "def make_model(): return nn.Linear(2, 2)\n")
    with pytest.raises(TaskError, match=r"only_model.py defines no function load_site_data"):
        resolve_task("torch", {"module": only_model})
    with pytest.raises(TaskError, match=r"nosuch.py: file not found"):
        resolve_task("torch", {"module": str(tmp_path / "nosuch.py")})
    bad = _module(tmp_path, "broken", "raise RuntimeError('broken at import')\n")
    with pytest.raises(TaskError, match=r"failed to import \(RuntimeError: broken at import\)"):
        resolve_task("torch", {"module": bad})
    good = _module(tmp_path, "good", "def make_model(width=2): return nn.Linear(3, width)\n"
                             "def load_site_data(data):\n"
                             "    x = torch.ones(4, 3)\n"
                             "    return (x, torch.zeros(4).long()), (x, torch.zeros(3).long())\n")
    task = resolve_task("torch", {"module": good, "depth": 3})
    with pytest.raises(ValueError, match=r"make_model\(\) refused the options \['depth'\]"):
        task.initial_weights()
    task = resolve_task("torch", {"module": good, "width": 5})
    assert task.initial_weights()["weight"].shape == (5, 3)
    with pytest.raises(ValueError, match=r"site a: held-out split: 4 inputs but 3 targets"):
        task.build_trainer(SiteData("a", {}))


def test_deployed_run_config_carries_the_tabular_schema(tmp_path: Path) -> None:
    """``fedsilo server run`` hands the run config to Flower, whose run config holds no
    lists (a schema's categories): the ServerApp must get the same task options back."""
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict

    from fedsilo.server.deploy import app_run_config, write_app_dir
    from fedsilo.server.flower_app import run_config_dict

    config = RunConfig.load(EXAMPLES / "tabular-readmission" / "deploy" / "run.toml",
                            {"run_id": "r1"})
    app = write_app_dir(tmp_path / "app", app_run_config(config))
    loaded, warnings = load_and_validate(app / "pyproject.toml")
    assert loaded is not None, warnings
    flat = flatten_dict(loaded["tool"]["flwr"]["app"]["config"])  # what the ServerApp sees
    raw = run_config_dict(flat)
    for key in ("server_key", "resume"):
        raw.pop(key)
    back = RunConfig.from_dict(raw)
    assert back.task_options == config.task_options
    assert back.task_options["features"]["ward"] == ["medical", "surgical", "cardiac"]
    assert server_task(back).identity == server_task(config).identity

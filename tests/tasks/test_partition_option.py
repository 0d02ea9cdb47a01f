"""A bundled task's demo split is its own option (``[task_options] partition``), not a
field of a deployment's `RunConfig`; ``fedsilo simulate --partition`` maps onto it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.cli import main
from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.server.flower_app import deployment_spec
from fedsilo.server.task_setup import check_deployable, demo_partition
from fedsilo.simulations.config import SimulationConfig
from fedsilo.tasks.partition import bundled_site_data

MOVED = ("--config: partition = 'iid' is not a deployment option: a bundled task's demo "
         "split goes under [task_options] as partition = 'iid' (fedsilo simulate "
         "--partition sets it)")
SMALL = ["--task", "wine", "--sites", "3", "--rounds", "1", "--eval-every", "0"]


def test_runconfig_has_no_partition_field() -> None:
    assert not hasattr(RunConfig(), "partition")
    assert demo_partition(RunConfig()) == "dirichlet:0.5"


def test_deployment_config_with_top_level_partition_is_refused(tmp_path: Path) -> None:
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('task = "digits"\nsites = 3\npartition = "iid"\n')
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(run_toml)
    assert str(exc.value) == MOVED
    with pytest.raises(ConfigError) as exc:  # Flower's run config (a flat key) alike
        RunConfig.from_dict({"sites": 3, "partition": "iid"})
    assert str(exc.value) == MOVED


def test_deployment_takes_the_split_from_the_task_options(tmp_path: Path) -> None:
    config = RunConfig.load(None, {"task": "wine", "sites": 3, "task_options.partition": "shards:1",
                                   "run_id": "d", "out": str(tmp_path)})
    assert demo_partition(config) == "shards:1"
    fed = deployment_spec(config, tmp_path / "d").federation
    data = bundled_site_data(fed, 0)
    assert data.options["partition"] == "shards:1"
    assert data.options["provenance"]["partition"] == "shards:1"
    bad = RunConfig.load(None, {"task": "wine", "task_options.partition": "zipf:1"})
    with pytest.raises(ConfigError, match=r"^--task: task wine: task_options.partition: "
                                          r"invalid partition 'zipf:1'"):
        check_deployable(bad)


def test_simulation_maps_partition_onto_the_bundled_task_option() -> None:
    flag = SimulationConfig.load(None, {"task": "wine", "partition": "iid"})
    assert flag.task_options == {"partition": "iid"} and flag.partition == "iid"
    table = SimulationConfig.load(None, {"task": "wine", "task_options.partition": "shards:2"})
    assert table.partition == "shards:2"
    both = SimulationConfig.load(None, {"task": "wine", "task_options.partition": "shards:2",
                                        "partition": "iid"})  # the flag wins over the file
    assert both.partition == "iid" and both.task_options["partition"] == "iid"
    default = SimulationConfig.load(None, {})
    assert default.partition == "dirichlet:0.5" and default.task_options == {}
    # a bundled task's config.toml holds the split only in its task options: it reloads
    # to the same config, and a deployment accepts it
    again = SimulationConfig.from_dict(flag.to_dict())
    assert again.to_dict() == flag.to_dict() and "partition" not in flag.to_dict()
    assert RunConfig.from_dict(flag.to_dict()).task_options == {"partition": "iid"}
    # a user's file: the split stays a simulation field
    user = SimulationConfig.load(None, {"task": "tabular", "partition": "column:site"})
    assert user.partition == "column:site" and "partition" not in user.task_options


def _digest(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(["simulate", *argv]) == 0
    out = capsys.readouterr().out
    return out.rsplit("model sha256:", 1)[1].split()[0]


def test_flag_and_task_option_give_the_same_run(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('[task_options]\npartition = "shards:1"\n')
    common = [*SMALL, "--engine", "inprocess", "--out", str(tmp_path / "runs")]
    by_option = _digest(capsys, [*common, "--config", str(run_toml), "--run-id", "opt"])
    by_flag = _digest(capsys, [*common, "--partition", "shards:1", "--run-id", "flag"])
    iid = _digest(capsys, [*common, "--partition", "iid", "--run-id", "iid"])
    assert by_option == by_flag != iid
    saved = (tmp_path / "runs" / "flag" / "config.toml").read_text()
    assert 'partition = "shards:1"' in saved and "[task_options]" in saved

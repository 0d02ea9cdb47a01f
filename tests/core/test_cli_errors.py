"""Bad input to `fedsilo simulate`: one line naming the option, exit 2, no run directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsilo.cli import main

CASES = [
    (["--dataset", "mnist"], "--dataset: unknown dataset 'mnist'; accepted: digits, breast_cancer, wine"),
    (["--aggregator", "nosuch"], "--aggregator: "),
    (["--optimizer", "fedfoo:lr=1"], "--optimizer: "),
    (["--partition", "dirichlet:-1"], "--partition: invalid partition 'dirichlet:-1'; accepted: iid"),
    (["--partition", "shards"], "--partition: invalid partition 'shards'"),
    (["--sites", "5000"], "--sites: sites (5000) exceeds the 1437 training samples"),
    (["--fraction", "0"], "--fraction: 0.0 is outside (0, 1]"),
    (["--fraction", "1.5"], "--fraction: 1.5 is outside (0, 1]"),
    (["--rounds", "0"], "--rounds: must be a positive integer, got 0"),
    (["--rounds", "-3"], "--rounds: must be a positive integer, got -3"),
    (["--rounds", "abc"], "argument --rounds: invalid int value: 'abc'"),
    (["--config", "/nonexistent/run.toml"], "--config: file not found: /nonexistent/run.toml"),
]


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_bad_simulate_input(argv: list[str], expected: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) if "invalid int" in expected else _no_raise():
        code = main(["simulate", "--out", str(tmp_path / "runs"), *argv])
        assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not (tmp_path / "runs").exists()


def test_invalid_toml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [unclosed\n")
    assert main(["simulate", "--config", str(bad), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"--config: {bad} is not valid TOML" in err and err.count("\n") == 1
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('foo = 1\n')
    assert main(["simulate", "--config", str(wrong)]) == 2
    assert "unknown option 'foo'" in capsys.readouterr().err
    typed = tmp_path / "typed.toml"
    typed.write_text('rounds = "many"\n')
    assert main(["simulate", "--config", str(typed)]) == 2
    assert "--rounds: expected an integer, got 'many'" in capsys.readouterr().err


def test_flags_override_the_file() -> None:
    from fedsilo.server.config import RunConfig
    from fedsilo.server.task_setup import demo_partition

    cfg = RunConfig.load(None, {"rounds": 4})
    assert cfg.rounds == 4 and cfg.sites == 10 and demo_partition(cfg) == "dirichlet:0.5"


def test_entry_point_exit_code_and_no_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fedsilo.cli", "simulate", "--partition", "zipf:1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "fedsilo simulate: error: --partition: invalid partition 'zipf:1'; "
        "accepted: iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1), "
        "column:NAME (a column of task_options.data naming each row's site)"
    )
    assert list(tmp_path.iterdir()) == []


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


# ------------------------------------------------- a deployment's config: no simulation fields
SIMULATION_FIELDS = [("attack", '"sign_flip"', "'sign_flip'"), ("malicious", "2", "2"),
                     ("allow_overreach", "true", "True"), ("site_max_epsilon", "8.0", "8.0")]


@pytest.mark.parametrize(("name", "toml", "shown"), SIMULATION_FIELDS)
def test_server_run_refuses_a_simulation_field(name: str, toml: str, shown: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``fedsilo server run --config run.toml`` naming a simulation-only field: one line
    naming it, exit 2, before anything is submitted (no SuperLink is needed to refuse it)."""
    server = tmp_path / "server.toml"
    server.write_text('[superlink]\ninsecure = true\nport = 1\n')
    run = tmp_path / "run.toml"
    run.write_text(f'rounds = 1\nsites = 3\n{name} = {toml}\nout = "{tmp_path / "runs"}"\n')
    assert main(["server", "run", "--server", str(server), "--config", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (f"fedsilo server run: error: --config: {name} = {shown} is a simulation "
                   "option (fedsilo simulate); a deployment's run config must not set it\n")
    assert not (tmp_path / "runs").exists()


def test_flower_run_config_refuses_a_simulation_field() -> None:
    """``flwr run --run-config 'attack="sign_flip" malicious=1'``: the ServerApp refuses the
    run config before it writes anything, naming the field."""
    from types import SimpleNamespace

    from fedsilo.server.config import ConfigError
    from fedsilo.server.flower_app import spec_from_context

    context = SimpleNamespace(run_config={"attack": "sign_flip", "malicious": 1}, run_id=7)
    with pytest.raises(ConfigError, match=r"^--config: attack = 'sign_flip' is a simulation "
                                          r"option \(fedsilo simulate\)"):
        spec_from_context(context)  # type: ignore[arg-type]


def test_simulation_fields_live_in_the_simulation_config(tmp_path: Path) -> None:
    """The server's `RunConfig` has none of them (a simulation-only default is ignored, as a
    simulation's config.toml holds it); `SimulationConfig` extends it with them."""
    import dataclasses

    from fedsilo.server.config import SIMULATION_ONLY, RunConfig
    from fedsilo.simulations.config import SimulationConfig

    server_fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert not server_fields & set(SIMULATION_ONLY)
    assert {f.name for f in dataclasses.fields(SimulationConfig)} == server_fields | set(SIMULATION_ONLY)
    assert RunConfig.from_dict({"malicious": 0, "allow_overreach": False}).to_dict() == RunConfig().to_dict()
    sim = SimulationConfig.load(None, {"attack": "sign_flip", "malicious": 1, "rounds": 2})
    assert (sim.attack, sim.malicious, sim.rounds) == ("sign_flip", 1, 2)
    with pytest.raises(Exception, match=r"--malicious: needs --attack NAME"):
        SimulationConfig.load(None, {"malicious": 1})

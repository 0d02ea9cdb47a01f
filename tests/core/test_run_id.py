"""Issue 19 point 6: run ids are limited to a safe character set and length.

A run id names the run directory and goes into lineage, logs and shell commands. One with
a newline or ``;``, a leading dot or more than 128 characters gets one line naming
--run-id and what is accepted, exit 2, and no run directory, whichever way it comes in
(flag, config file, Flower run config).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.cli import main
from fedsilo.server.config import ConfigError, RunConfig

ACCEPTED = "expected 1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
BAD = [
    ("run\nid", r"'run\nid'"),
    ("run;rm -rf x", "'run;rm -rf x'"),
    ("a/b", "'a/b'"),
    (".hidden", "'.hidden'"),
    ("", "''"),
    ("x" * 300, f"'{'x' * 40}'... (300 characters)"),
    ("x" * 129, f"'{'x' * 40}'... (129 characters)"),
    ("caf\u00e9", "'caf\u00e9'"),
]


@pytest.mark.parametrize(("run_id", "shown"), BAD, ids=[repr(b[0])[:20] for b in BAD])
def test_bad_run_id_is_refused_with_one_line(run_id: str, shown: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["simulate", "--out", str(out), "--run-id", run_id]) == 2
    err = capsys.readouterr().err
    assert err == f"fedsilo simulate: error: --run-id: {shown} is not accepted; {ACCEPTED}\n"
    assert not out.exists()


def test_bad_run_id_in_a_config_file_or_flower_run_config(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('run_id = "a;b"\n')
    expected = f"--run-id: 'a;b' is not accepted; {ACCEPTED}"
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(toml)
    assert str(exc.value) == expected
    with pytest.raises(ConfigError) as exc:  # `flwr run` / `server run` configs
        RunConfig.from_dict({"run_id": "a;b", "rounds": 2})
    assert str(exc.value) == expected


@pytest.mark.parametrize("run_id", ["a", "Z9", "20261206-210231-abc123", "flwr-123",
                                    "run_1.v2", "x" * 128])
def test_safe_run_ids_are_accepted(run_id: str) -> None:
    assert RunConfig.load(None, {"run_id": run_id}).run_id == run_id

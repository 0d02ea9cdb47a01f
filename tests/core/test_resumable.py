"""Which run directories `--resume` accepts, and the one-line reason when it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from fedsilo.server.checkpoint import CHECKPOINT_NAME, resumable_config
from fedsilo.server.config import ConfigError, RunConfig


def test_refuses_what_cannot_resume_and_loads_what_can(tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    run.mkdir()
    with pytest.raises(ConfigError, match="has no config.toml; not a fedsilo run directory"):
        resumable_config(run)
    config = RunConfig.load(None, {"sites": 4, "rounds": 7, "run_id": "run-1", "out": str(tmp_path)})
    (run / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    with pytest.raises(ConfigError, match=r"has no checkpoint \(did round 1 finish\?\)"):
        resumable_config(run)
    (run / CHECKPOINT_NAME).write_bytes(b"")
    loaded = resumable_config(run)
    assert (loaded.sites, loaded.rounds, loaded.run_id) == (4, 7, "run-1")
    (run / "report.html").write_text("done")
    with pytest.raises(ConfigError, match="holds a finished run"):
        resumable_config(run)

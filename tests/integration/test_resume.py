"""Crash the server (SIGKILL) at several points, resume, and get the uninterrupted model.

The runs use the in-process engine: the same ServerApp and ClientApp as on Ray, without
Ray's start-up in each of the five processes (a resume on Ray, and the Ray processes a
SIGKILL leaves behind, are the subject of test_signals.py; test_simulate.py checks that
both engines give the same model).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo import lineage
from fedsilo.server.checkpoint import Checkpoint, write_checkpoint
from fedsilo.server.config import RunConfig
from fedsilo.simulations.runner import run_federation

OPTS = {"sites": 4, "rounds": 5, "fraction": 0.75, "seed": 3}
ARGV = ["--sites", "4", "--rounds", "5", "--fraction", "0.75", "--seed", "3", "--engine", "inprocess"]


def _simulate(args: list[str], fault: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("FEDSILO_FAULT", None)
    if fault:
        env["FEDSILO_FAULT"] = fault
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsilo.cli", "simulate", "--quiet", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        # whatever the killed server left in its session (Ray's processes on that engine)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_gives_the_same_model(tmp_path: Path) -> None:
    reference = run_federation(RunConfig.load(None, {**OPTS, "out": str(tmp_path), "run_id": "ref"}),
                               engine="inprocess")
    run_dir = tmp_path / "crashy"
    first = _simulate([*ARGV, "--out", str(tmp_path), "--run-id", "crashy"], "mid_round@2")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    # mid-round (replies in, nothing aggregated), between aggregation and checkpoint, and
    # inside the lineage write (after the INSERT, before the COMMIT of round 4's record)
    for fault in ("before_checkpoint@3", "lineage_write@4", None):
        res = _simulate(["--resume", str(run_dir), "--engine", "inprocess"], fault)
        if fault:
            assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
            assert not (run_dir / "model.npz").exists()
        else:
            assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final_model_digest"] == reference.final_digest
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4, 5]
    report = lineage.verify_run(run_dir)
    assert report.ok, report.summary
    chain = lineage.read_chain(run_dir / "lineage.sqlite")
    kinds = [r["type"] for r in chain]
    assert kinds.count("resume") == 3 and kinds[-1] == "closing"
    assert [r["body"]["round"] for r in chain if r["type"] == "round"] == [1, 2, 3, 4, 5]
    assert [r["body"]["from_round"] for r in chain if r["type"] == "resume"] == [1, 2, 4]
    ref_chain = lineage.read_chain(reference.run_dir / "lineage.sqlite")
    outs = [r["body"]["model_out"] for r in chain if r["type"] == "round"]
    assert outs == [r["body"]["model_out"] for r in ref_chain if r["type"] == "round"]


def test_checkpoint_holds_the_state_of_its_own_round_when_the_write_lags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`RunStore.commit_round` writes round r's checkpoint before round r+1 starts.

    A slow disk (here: a 0.4 s pause before each write) must not let round r+1's
    sampling draw leak into round r's checkpoint: a resume from it would sample
    different sites and end with a different model (seen once on a loaded CI machine,
    when a background thread wrote the checkpoints).
    """
    from fedsilo.server import round as round_steps
    from fedsilo.server import run_store

    after_sample: list[dict] = []
    model_before: list[np.ndarray] = []  # the model each round starts from
    written: list[tuple[int, dict, np.ndarray]] = []
    sample = round_steps.sample

    def recording_sample(server: Any) -> list:
        sites = sample(server)
        after_sample.append(copy.deepcopy(server.rng.bit_generator.state))
        model_before.append(server.model.copy())
        return sites

    def slow_fault_point(name: str, server_round: int) -> None:
        if name == "before_checkpoint":
            time.sleep(0.4)

    def recording_write(run_dir: Path, ckpt: Checkpoint) -> Path:
        written.append((ckpt.round, copy.deepcopy(ckpt.rng_state), ckpt.model.copy()))
        return write_checkpoint(run_dir, ckpt)

    monkeypatch.setattr(round_steps, "sample", recording_sample)
    monkeypatch.setattr(run_store, "fault_point", slow_fault_point)
    monkeypatch.setattr(run_store, "write_checkpoint", recording_write)
    run = run_federation(RunConfig.load(None, {**OPTS, "rounds": 3, "out": str(tmp_path), "run_id": "lag"}),
                         engine="inprocess")
    assert [r for r, _, _ in written] == [1, 2, 3]
    for r, rng_state, _ in written:
        assert rng_state == after_sample[r - 1], f"round {r}'s checkpoint holds another round's sampler state"
    for (r, _, model), start_of_next in zip(written, model_before[1:], strict=False):
        assert np.array_equal(model, start_of_next), f"round {r}'s checkpoint holds another model"
    assert np.array_equal(written[-1][2], np.concatenate([w.ravel() for w in run.result.final_weights.values()]))

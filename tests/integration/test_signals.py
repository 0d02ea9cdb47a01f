"""SIGTERM/SIGINT end `fedsilo simulate` cleanly and resumably; SIGKILL leaves nothing for good.

Real subprocesses on Flower's Ray engine (the point is Ray's processes): the first signal
closes the chain as ``interrupted`` within seconds, `--resume` then finishes the run with
the uninterrupted run's model; a second signal exits at once; after SIGKILL the Ray
processes left behind are killed by the next `--resume`, from the PIDs the run recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers.waiting import wait_for

from fedsilo import lineage
from fedsilo.cli import main
from fedsilo.server.config import RunConfig
from fedsilo.server.stopping import PIDS_NAME, LeftoverOwnerAlive, PidRecord
from fedsilo.simulations.runner import run_federation

# enough rounds that the signal lands mid-run on a fast machine; digits, 3 sites: cheap rounds
ARGV = ["--sites", "3", "--rounds", "15", "--seed", "2"]
OPTS = {"sites": 3, "rounds": 15, "seed": 2}
START_TIMEOUT = 300.0  # Ray's start on a loaded machine: a safety net, not a guess
EXIT_BOUND = 60.0  # the requirement is 10 s; asserted generously for a loaded CI machine


def _start(tmp_path: Path, run_id: str, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    err = (tmp_path / f"{run_id}.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsilo.cli", "simulate", "--quiet", *extra],
        stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True,
    )
    return proc, tmp_path / f"{run_id}.err"


def _first_round(proc: subprocess.Popen[str], run_dir: Path, err: Path) -> None:
    def recorded() -> bool:
        assert proc.poll() is None, f"simulate exited early: {err.read_text()[-2000:]}"
        log = run_dir / "rounds.jsonl"
        return log.exists() and log.read_text().count("\n") >= 1 and (run_dir / PIDS_NAME).exists()

    wait_for(recorded, "the first round in rounds.jsonl", START_TIMEOUT, poll=0.2)


def _recorded(run_dir: Path) -> list[dict[str, Any]]:
    return list(json.loads((run_dir / PIDS_NAME).read_text())["processes"])


def _alive(entries: list[dict[str, Any]]) -> list[str]:
    """Recorded processes still running as recorded (same start time; zombies are gone)."""
    out = []
    for e in entries:
        try:
            p = psutil.Process(e["pid"])
            if abs(p.create_time() - e["create_time"]) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{e['pid']} {e['name']}")
        except psutil.NoSuchProcess:
            continue
    return out


def _group_members(pgid: int) -> list[str]:
    out = []
    for p in psutil.process_iter(["pid", "name", "status"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.info['name']}")
    return out


def _cleanup(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _resume(run_dir: Path) -> subprocess.CompletedProcess[str]:
    """Resume ``run_dir`` to the end. On the in-process engine: what is tested here (the
    leftovers cleaned up first, the chain continued) happens before any engine starts, and
    the engines give the same model (tests/integration/test_simulate.py)."""
    return subprocess.run([sys.executable, "-m", "fedsilo.cli", "simulate", "--quiet",
                           "--engine", "inprocess", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=900, start_new_session=True)


def _chain(run_dir: Path) -> list[dict[str, Any]]:
    return lineage.read_chain(run_dir / "lineage.sqlite")


@pytest.mark.slow
def test_sigterm_closes_the_chain_as_interrupted_and_resume_finishes_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "sig"
    proc, err = _start(tmp_path, "sig", *ARGV, "--out", str(tmp_path), "--run-id", "sig")
    try:
        _first_round(proc, run_dir, err)
        ray_procs = _recorded(run_dir)
        assert {"raylet", "gcs_server"} <= {e["name"] for e in ray_procs}, ray_procs
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=EXIT_BOUND * 3)
        took = time.monotonic() - t0
        with capsys.disabled():
            print(f"\n[signals] SIGTERM -> exit in {took:.2f} s (requirement 10 s)")
        assert took < EXIT_BOUND, f"took {took:.1f} s"
        stderr = err.read_text()
        assert code == 130, stderr[-2000:]
        assert "interrupted by SIGTERM: the run's chain is closed as interrupted; continue " \
               f"with: fedsilo simulate --resume {run_dir}" in stderr, stderr[-2000:]
        assert "Traceback" not in stderr
        # nothing of the command is left: its process group, and the Ray processes it recorded
        wait_for(lambda: not _group_members(proc.pid) and not _alive(ray_procs),
                 "the command's processes to be gone", 30, poll=0.2,
                 state=lambda: (_group_members(proc.pid), _alive(ray_procs)))
        assert not (run_dir / PIDS_NAME).exists()
    finally:
        _cleanup(proc)

    chain = _chain(run_dir)
    closing = chain[-1]["body"]
    assert chain[-1]["type"] == "closing" and closing["reason"] == "interrupted", closing
    assert closing["detail"] == "interrupted by SIGTERM"
    done = [r["body"]["round"] for r in chain if r["type"] == "round"]
    assert done == list(range(1, len(done) + 1)) and 1 <= len(done) < OPTS["rounds"]
    assert main(["lineage", "verify", str(run_dir)]) == 0
    assert "closed (interrupted)" in capsys.readouterr().out

    res = _resume(run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    reference = run_federation(RunConfig.load(None, {**OPTS, "out": str(tmp_path), "run_id": "ref"}),
                               engine="inprocess")
    chain = _chain(run_dir)
    types = [r["type"] for r in chain]
    assert types.count("resume") == 1 and types[types.index("resume") - 1] == "closing"
    assert chain[-1]["body"]["final_model_digest"] == reference.final_digest
    rounds = [r["body"]["round"] for r in chain if r["type"] == "round"]
    assert rounds == list(range(1, OPTS["rounds"] + 1))
    assert main(["lineage", "verify", str(run_dir)]) == 0


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_kills_the_ray_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "twice"
    proc, err = _start(tmp_path, "twice", *ARGV, "--out", str(tmp_path), "--run-id", "twice")
    try:
        _first_round(proc, run_dir, err)
        ray_procs = _recorded(run_dir)
        proc.send_signal(signal.SIGINT)
        # a signal that arrives while the first is still pending merges with it: send the
        # second once the first was handled
        wait_for(lambda: "SIGINT: stopping" in err.read_text(), "the first signal handled", 60,
                 poll=0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=EXIT_BOUND * 3)
        took = time.monotonic() - t0
        print(f"[signals] second SIGINT -> exit in {took:.2f} s")
        if code == 130 and "closed as interrupted" in err.read_text():
            pytest.skip("the run had already closed cleanly when the second signal came")
        assert code == 128 + signal.SIGINT, err.read_text()[-2000:]
        assert took < EXIT_BOUND
        wait_for(lambda: not _alive(ray_procs), "the recorded Ray processes to be gone", 30,
                 poll=0.2, state=lambda: _alive(ray_procs))
    finally:
        _cleanup(proc)


@pytest.mark.slow
def test_after_sigkill_the_next_resume_kills_the_ray_processes_left_behind(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    proc, err = _start(tmp_path, "killed", *ARGV, "--out", str(tmp_path), "--run-id", "killed")
    try:
        _first_round(proc, run_dir, err)
        # the agents start a little after the first round: wait until they are recorded
        wait_for(lambda: len(_recorded(run_dir)) >= 6, "Ray's agents recorded", 60, poll=0.2,
                 state=lambda: [e["name"] for e in _recorded(run_dir)])
        ray_procs = _recorded(run_dir)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        left = _alive(ray_procs)
        # the failure of issue 19: Ray's agent processes outlive a SIGKILLed simulation
        assert left, "no recorded Ray process outlived SIGKILL: nothing to clean up"
        print(f"[signals] alive after SIGKILL: {left}")
        res = _resume(run_dir)
        assert res.returncode == 0, res.stderr[-2000:]
        assert _alive(ray_procs) == []
        assert not (run_dir / PIDS_NAME).exists()
        assert main(["lineage", "verify", str(run_dir)]) == 0
    finally:
        _cleanup(proc)


# ------------------------------------------------------------------ PID records, unit level
def test_pid_record_kills_only_the_recorded_process(tmp_path: Path) -> None:
    """A leftover is killed by PID only while the PID is still the recorded process."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record = PidRecord(tmp_path)
        record.add([sleeper.pid, other.pid])
        data = json.loads((tmp_path / PIDS_NAME).read_text())
        # a dead owner (as after SIGKILL) and a reused PID: `other` now has another start time
        data["owner"]["pid"] = 2 ** 22 + 7
        for e in data["processes"]:
            if e["pid"] == other.pid:
                e["create_time"] -= 1000.0
        (tmp_path / PIDS_NAME).write_text(json.dumps(data))
        killed = PidRecord.clean_leftovers(tmp_path)
        assert killed == [sleeper.pid]
        sleeper.wait(timeout=30)  # ended (psutil reaped it, so its code is not kept)
        assert other.poll() is None  # not the recorded process: left alone
        assert not (tmp_path / PIDS_NAME).exists()
    finally:
        for p in (sleeper, other):
            p.kill()
            p.wait()


def test_a_directory_whose_command_still_runs_is_refused(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        entry = psutil.Process(owner.pid)
        (tmp_path / PIDS_NAME).write_text(json.dumps({
            "owner": {"pid": owner.pid, "create_time": entry.create_time(), "name": "python",
                      "cmdline": []},
            "processes": []}))
        with pytest.raises(LeftoverOwnerAlive, match=f"in use by a running fedsilo command "
                                                     f"\\(pid {owner.pid}\\)"):
            PidRecord.clean_leftovers(tmp_path)
        assert owner.poll() is None
    finally:
        owner.kill()
        owner.wait()


# ------------------------------------------------------------------ interrupted chains
def test_only_a_resume_record_may_follow_an_interrupted_closing(tmp_path: Path) -> None:
    from fedsilo.lineage.synthetic import build_synthetic_run

    run = build_synthetic_run(tmp_path / "run", rounds=2, sites=2, close=False, ledgers=False)
    key = lineage.load_or_create_key(run.run_dir / "keys" / "server.pem")
    db = run.run_dir / "lineage.sqlite"
    with lineage.LineageWriter.open(db, key) as w:
        w.append(lineage.ClosingRecord("interrupted", "interrupted by SIGTERM", 2,
                                       run.model_digests[-1]))
    assert lineage.verify_run(db).ok
    with lineage.LineageWriter.open(db, key) as w:  # an operator's stop is resumable
        with pytest.raises(ValueError, match="continues only with a resume record"):
            w.append(lineage.ClosingRecord("completed", "x", 2, run.model_digests[-1]))
        w.append(lineage.ResumeRecord("2026-01-02T00:00:00+00:00", 2, "restart"))
        w.append(lineage.ClosingRecord("interrupted", "again", 2, run.model_digests[-1]))
    report = lineage.verify_run(db)
    assert report.ok and "closed (interrupted)" in report.summary, report.summary


# ------------------------------------------------------------------ deployment
def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.network
def test_server_start_after_sigkill_stops_the_superlink_left_behind(tmp_path: Path) -> None:
    """A SIGKILLed `fedsilo server start` leaves its SuperLink (own session) holding the port;
    the next start with the same state directory kills it, by the recorded PID, first."""
    import socket

    import tomli_w

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "server.toml"
    config.write_text(tomli_w.dumps({"superlink": {"port": port, "state_dir": "state",
                                                   "insecure": True}}))
    argv = [sys.executable, "-m", "fedsilo.cli", "server", "start", "--config", str(config)]
    logs = tmp_path / "state" / "logs"
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    second = None
    try:
        wait_for(lambda: _listening(port) and (logs / PIDS_NAME).exists(), "the SuperLink",
                 START_TIMEOUT, poll=0.2)
        left = _recorded(logs)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert _alive(left), "the SuperLink did not outlive the SIGKILLed command"
        err = tmp_path / "second.err"
        with err.open("w") as fh:
            second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=fh,
                                      start_new_session=True)
        wait_for(lambda: "left running" in err.read_text() and _listening(port)
                 and _recorded(logs) != left, "the second start", START_TIMEOUT, poll=0.2,
                 state=lambda: err.read_text()[-500:])
        assert _alive(left) == []
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=EXIT_BOUND) == 0, err.read_text()[-2000:]
        assert not (logs / PIDS_NAME).exists()
    finally:
        for proc in (first, second):
            if proc is not None:
                _cleanup(proc)


def _serverapp(superlink_pid: int) -> psutil.Process | None:
    """The `flwr-serverapp` process the SuperLink started (a descendant), if running."""
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(superlink_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("flwr-serverapp" in part for part in proc.cmdline()):
                    return proc
    return None


@pytest.mark.network
def test_sigterm_to_the_deployed_serverapp_closes_interrupted_and_resume_continues(
        tmp_path: Path, startup: Any) -> None:
    """On the deployment runtime the ServerApp runs in Flower's `flwr-serverapp` process,
    whose own SIGTERM handler exits (within a 5 s force-exit timer): fedsilo's handler
    comes first, the chain closes as ``interrupted``, then Flower exits its way; and
    ``resume=true`` continues the run after that closing record."""
    from deploy.procs import (
        REPO,
        Procs,
        chain_types,
        env_for,
        flwr_json,
        start_insecure_federation,
        wait_run_finished,
    )

    home = tmp_path / "flwr-home"
    home.mkdir()
    env = env_for(home)
    procs = Procs(tmp_path / "logs", env)
    out = tmp_path / "runs"
    run_dir = out / "term"
    app = str(REPO / "examples" / "flower-app")
    # the resumed run's handshake may wait for a site still finishing the killed run's
    # round-2 task (a SuperNode runs one task at a time): time enough for both
    run_config = f"rounds=2 eval-every=0 round-timeout={startup.scaled(120):.0f} out='{out}' run-id='term'"
    safety = startup.scaled(240)
    try:
        nodes = start_insecure_federation(tmp_path, procs, home, 3, name="t", startup=startup)
        link = procs.started[0].pid
        first = flwr_json(env, "run", app, "t", "--run-config", run_config)
        wait_for(lambda: (run_dir / "checkpoint.npz").exists(), "round 1's checkpoint", safety)
        serverapp = wait_for(lambda: _serverapp(link), "the ServerApp process", safety)
        # Stop the run while round 2 trains, once every SuperNode holds its round-2 message
        # (handshake, round 1, round 2). Flower 1.42's SuperNode, when a stopped run's
        # message reaches it mid-pull ("not in `RUNNING` status. Ignoring message"), still
        # runs a ClientApp for it, and that stale reply takes the push of the next message
        # it receives: the resumed run's handshake reply is then never sent (seen once in
        # a fresh-clone CI run: "handshake: 2 of 3 sites answered").
        wait_for(lambda: all(n.log_path.read_text().count("Received successfully") >= 3
                             for n in nodes), "every SuperNode's round-2 message", safety,
                 poll=0.1)
        t0 = time.monotonic()
        serverapp.send_signal(signal.SIGTERM)
        wait_for(lambda: "closing" in chain_types(run_dir), "the closing record", safety,
                 poll=0.1)
        print(f"[signals] SIGTERM to flwr-serverapp -> chain closed in "
              f"{time.monotonic() - t0:.2f} s")
        closing = _chain(run_dir)[-1]["body"]
        # fedsilo's handler, not Flower's exit (which raced its 5 s force-exit timer)
        assert (closing["reason"], closing["detail"]) == ("interrupted", "interrupted by SIGTERM"), closing
        wait_run_finished(env, "t", first["run-id"], run_dir, safety)
        second = flwr_json(env, "run", app, "t", "--run-config", f"{run_config} resume=true")
        wait_run_finished(env, "t", second["run-id"], run_dir, safety)
    finally:
        procs.stop_all()
    kinds = [r["type"] for r in _chain(run_dir)]
    assert kinds[kinds.index("closing") + 1] == "resume", kinds
    assert kinds[-1] == "closing" and _chain(run_dir)[-1]["body"]["reason"] == "completed"
    assert [r["body"]["round"] for r in _chain(run_dir) if r["type"] == "round"] == [1, 2]
    report = lineage.verify_run(run_dir)
    assert report.ok, report.summary


def test_a_stop_while_sites_score_the_new_model_closes_on_the_last_recorded_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop that arrives after a round's step but before its record (while the sites
    score the new model) must close the chain on the model the chain last recorded: the
    round is re-run on resume (it failed under CI load: closing named the stepped model)."""
    from fedsilo.server import site_eval, stopping
    from fedsilo.simulations.runner import resume_federation

    real = site_eval.send_and_receive

    def stop_in_round_2(grid: Any, msgs: Any, timeout: Any = None) -> Any:
        if msgs and msgs[0].content["config"]["server_round"] == 2:
            stopping.request_stop()  # what the first SIGTERM does, mid-exchange
            stopping.check_stop()
        return real(grid, msgs, timeout=timeout)

    opts = {"sites": 3, "rounds": 3, "seed": 2, "out": str(tmp_path)}
    monkeypatch.setattr(site_eval, "send_and_receive", stop_in_round_2)
    try:
        with pytest.raises(stopping.RunInterrupted):
            run_federation(RunConfig.load(None, {**opts, "run_id": "cut"}), engine="inprocess")
    finally:
        stopping.STOP.clear()
    monkeypatch.setattr(site_eval, "send_and_receive", real)
    run_dir = tmp_path / "cut"
    chain = _chain(run_dir)
    rounds = [r["body"] for r in chain if r["type"] == "round"]
    assert [r["round"] for r in rounds] == [1] and chain[-1]["body"]["reason"] == "interrupted"
    assert chain[-1]["body"]["final_model_digest"] == rounds[-1]["model_out"]
    assert lineage.verify_run(run_dir).ok
    resumed = resume_federation(run_dir, engine="inprocess")
    reference = run_federation(RunConfig.load(None, {**opts, "run_id": "ref"}), engine="inprocess")
    assert resumed.final_digest == reference.final_digest
    assert lineage.verify_run(run_dir).ok


def test_flower_errors_after_a_stop_request_are_not_printed(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """Once SIGINT/SIGTERM asked the run to stop, the engine is shut down on purpose: Flower's
    errors about ClientApp actors dying mid-message (with tracebacks) are dropped, and only
    then (found by the SIGTERM test above, under load)."""
    import logging

    from fedsilo.common import stopping
    from fedsilo.simulations.engine import QuietAfterStop

    flwr_logger = logging.getLogger("flwr")
    quiet = QuietAfterStop()
    flwr_logger.addFilter(quiet)
    try:
        with caplog.at_level(logging.ERROR, logger="flwr"):
            flwr_logger.error("before the stop")
            stopping.request_stop()
            flwr_logger.error("An exception was raised when processing a message by RayBackend")
    finally:
        stopping.STOP.clear()
        flwr_logger.removeFilter(quiet)
    assert [r.getMessage() for r in caplog.records] == ["before the stop"]

"""Round latency on Flower's deployment runtime: fedsilo vs a bare Flower app (issue 7 point 7).

One SuperLink and three SuperNodes on loopback (insecure; node config
``partition-id=N``), started once; then, alternately on that same set-up, the same
3-site, 3-round federation (digits, iid, the same MLP, data, partitions and local
training code) through

* fedsilo: ``examples/flower-app`` (fedsilo's ServerApp/ClientApp: handshake, seeded
  sampling, screening, signed updates, lineage, checkpoints, central evaluation);
* bare Flower: ``benchmarks/deploy_bare_app`` (Flower's own ``FedAvg``, plain
  ClientApp, central evaluation).

With ``--secagg`` a third app runs in the same alternation: fedsilo with SecAgg+
(``secagg.enabled=true``), to read the secure round's cost on the deployment runtime
against fedsilo's plain round (issue 6). A secure round after the first has two message
exchanges (masked input, unmask: each round's setup and share stages ride on the round
before it) where a plain round has one; round 1 has three (its keys come with the
handshake reply). Round 1 is reported apart as well.

Per-round wall time: fedsilo's ``metrics.json`` ``wall_time`` (sampling to checkpoint);
bare Flower: time between consecutive central evaluations. The run's total (submit to
finished, polled every 0.5 s) includes start-up and, for fedsilo, the handshake query.

    python benchmarks/bench_deploy_latency.py --repeats 2 [--secagg] --out benchmarks/results/deploy.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from fedsilo.server.deploy_procs import (
    ManagedProcess,
    child_env,
    flower_bin,
    free_port,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[1]
FEDSILO_APP = REPO / "examples" / "flower-app"
BARE_APP = REPO / "benchmarks" / "deploy_bare_app"
ROUNDS = 3
SITES = 3


def _flwr(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([str(flower_bin("flwr")), *args, "--format", "json"], capture_output=True,
                         text=True, env=env, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"flwr {args[0]} failed: {res.stdout[-500:]} {res.stderr[-500:]}")
    payload = json.loads(res.stdout[res.stdout.find("{"):])
    if not payload.get("success", True):
        raise RuntimeError(f"flwr {args[0]} failed: {str(payload.get('error-message')).strip()}")
    return payload


def _run_app(env: dict[str, str], app: Path, overrides: str, timeout: float) -> float:
    """Submit, wait for completion; return submit-to-finished seconds."""
    t0 = time.perf_counter()
    run_id = _flwr(env, "run", str(app), "bench", "--run-config", overrides)["run-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _flwr(env, "ls", "bench", "--run-id", run_id)["runs"][0]["status"]
        if status.startswith("finished"):
            if status != "finished:completed":
                raise RuntimeError(f"{app.name}: run {run_id} {status}")
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise RuntimeError(f"{app.name}: run {run_id} did not finish in {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="runs of each app, alternating")
    ap.add_argument("--out", type=Path, help="markdown file for the results section")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--secagg", action="store_true",
                    help="also run fedsilo with SecAgg+ in the alternation (issue 6)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedsilo-bench-deploy-"))
    home = work / "flwr-home"
    home.mkdir()
    env = child_env(home, {"PYTHONPATH": os.pathsep.join(
        [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])})
    link = free_port()
    (home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": "bench", "bench": {"address": f"127.0.0.1:{link}", "insecure": True}}}))
    procs: list[ManagedProcess] = []
    fedsilo_rounds: list[float] = []
    bare_rounds: list[float] = []
    secagg_rounds: list[float] = []
    secagg_first: list[float] = []  # round 1 of each SecAgg+ run (with the setup exchange)
    totals: dict[str, list[float]] = {"fedsilo": [], "bare": []}
    accuracy: dict[str, float] = {}
    try:
        procs.append(ManagedProcess("superlink", [
            str(flower_bin("flower-superlink")), "--insecure", "--host", "127.0.0.1", "--port", str(link),
            "--database", str(work / "state.db"), "--disable-runtime-dependency-installation",
        ], work / "superlink.log", env, work))
        wait_for_port(procs[0], "127.0.0.1", link, 60)
        for i in range(SITES):
            procs.append(ManagedProcess(f"supernode-{i}", [
                str(flower_bin("flower-supernode")), "--insecure", "--superlink", f"127.0.0.1:{link}",
                "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", f"partition-id={i}",
            ], work / f"supernode-{i}.log", env, work))
        deadline = time.monotonic() + 60
        while sum(n["status"] == "online" for n in _flwr(env, "supernode", "ls", "bench")["nodes"]) < SITES:
            if time.monotonic() > deadline:
                raise RuntimeError("SuperNodes did not come online")
            time.sleep(0.5)

        for rep in range(args.repeats):
            times_file = work / f"bare-{rep}.json"
            totals["bare"].append(_run_app(env, BARE_APP, f"rounds={ROUNDS} times-file='{times_file}'",
                                           args.timeout))
            stamps = json.loads(times_file.read_text())
            bare_rounds += [b["time"] - a["time"] for a, b in zip(stamps, stamps[1:], strict=False)]
            accuracy["bare"] = stamps[-1]["accuracy"]

            out = work / "runs"
            totals["fedsilo"].append(_run_app(
                env, FEDSILO_APP,
                f"rounds={ROUNDS} sites={SITES} task_options.partition='iid' out='{out}' run-id='bench-{rep}'",
                args.timeout))
            metrics = json.loads((out / f"bench-{rep}" / "metrics.json").read_text())
            fedsilo_rounds += [r["wall_time"] for r in metrics["rounds"]]
            accuracy["fedsilo"] = metrics["rounds"][-1]["test_accuracy"]
            if args.secagg:
                _run_app(env, FEDSILO_APP, f"rounds={ROUNDS} sites={SITES} task_options.partition='iid' "
                         f"out='{out}' run-id='secagg-{rep}' secagg.enabled=true", args.timeout)
                metrics = json.loads((out / f"secagg-{rep}" / "metrics.json").read_text())
                secagg_first.append(metrics["rounds"][0]["wall_time"])
                secagg_rounds += [r["wall_time"] for r in metrics["rounds"][1:]]
                accuracy["secagg"] = metrics["rounds"][-1]["test_accuracy"]
            print(f"repeat {rep + 1}/{args.repeats}: bare total {totals['bare'][-1]:.1f} s, "
                  f"fedsilo total {totals['fedsilo'][-1]:.1f} s", flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept (with the logs) when a run failed

    f_mean, b_mean = statistics.mean(fedsilo_rounds), statistics.mean(bare_rounds)
    f_med, b_med = statistics.median(fedsilo_rounds), statistics.median(bare_rounds)
    load = os.getloadavg()
    lines = [
        "## Round latency on Flower's deployment runtime (issue 7, point 7)",
        "",
        f"Command: `python benchmarks/bench_deploy_latency.py --repeats {args.repeats}"
        f"{' --secagg' if args.secagg else ''}{' --out ' + str(args.out) if args.out else ''}`",
        "",
        f"One insecure SuperLink + {SITES} SuperNodes on 127.0.0.1 (Flower "
        f"{_flwr_version()}), started once; {args.repeats} run(s) of each app alternating on "
        f"that set-up; digits, iid, {SITES} sites, {ROUNDS} rounds, same MLP, data, partitions "
        "and local training; central evaluation every round in both. Runtime dependency "
        "installation off. The deployment runtime starts a fresh ClientApp process per message.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(load average at the end {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}).",
        "",
        "| | fedsilo | bare Flower FedAvg | ratio fedsilo / Flower |",
        "|---|---:|---:|---:|",
        f"| per-round wall time, mean (s) | {f_mean:.2f} | {b_mean:.2f} | {f_mean / b_mean:.2f} |",
        f"| per-round wall time, median (s) | {f_med:.2f} | {b_med:.2f} | {f_med / b_med:.2f} |",
        f"| run total, submit to finished, mean (s) | {statistics.mean(totals['fedsilo']):.1f} | "
        f"{statistics.mean(totals['bare']):.1f} | "
        f"{statistics.mean(totals['fedsilo']) / statistics.mean(totals['bare']):.2f} |",
        f"| final test accuracy (last run) | {accuracy['fedsilo']:.4f} | {accuracy['bare']:.4f} | |",
        "",
        f"Per-round samples (s): fedsilo {[round(x, 2) for x in fedsilo_rounds]}; "
        f"bare {[round(x, 2) for x in bare_rounds]}.",
        "",
    ]
    if secagg_rounds:
        s_mean, s_med = statistics.mean(secagg_rounds), statistics.median(secagg_rounds)
        a_mean = statistics.mean(secagg_first + secagg_rounds)
        s1 = statistics.mean(secagg_first)
        lines += [
            "SecAgg+ on the same set-up (`--secagg`: fedsilo with `secagg.enabled=true`, in the "
            "same alternation). Every round after the first takes two message exchanges "
            "(masked input + next round's keys, unmask + next round's shares); round 1 takes "
            "three (share, masked input, unmask; its keys come with the handshake); a plain "
            "round takes one:",
            "",
            "| | fedsilo + SecAgg+ | fedsilo plain | ratio SecAgg+ / plain |",
            "|---|---:|---:|---:|",
            f"| per-round wall time, rounds 2..{ROUNDS}, mean (s) | {s_mean:.2f} | {f_mean:.2f} "
            f"| {s_mean / f_mean:.2f} |",
            f"| per-round wall time, rounds 2..{ROUNDS}, median (s) | {s_med:.2f} | {f_med:.2f} "
            f"| {s_med / f_med:.2f} |",
            f"| round 1 wall time, mean (s) | {s1:.2f} | {f_mean:.2f} | {s1 / f_mean:.2f} |",
            f"| all rounds, mean (s) | {a_mean:.2f} | {f_mean:.2f} | {a_mean / f_mean:.2f} |",
            f"| final test accuracy (last run) | {accuracy['secagg']:.4f} | {accuracy['fedsilo']:.4f} | |",
            "",
            f"Per-round samples (s): SecAgg+ round 1 {[round(x, 2) for x in secagg_first]}, "
            f"rounds 2..{ROUNDS} {[round(x, 2) for x in secagg_rounds]}.",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def _flwr_version() -> str:
    import flwr

    return str(getattr(flwr, "__version__", "1.42"))


if __name__ == "__main__":
    sys.exit(main())

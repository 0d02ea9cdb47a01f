"""Scale: fedsilo against a bare Flower app at 10, 200 and 1,000 simulated sites.

Each measurement is one separate process, as a user runs it: ``fedsilo simulate`` (lineage,
signatures and checkpoints on; ``--eval-every 0``, so both send one train message per
sampled site and round) and a bare Flower app (Flower's FedAvg, the same MLP, data,
partition, local training and simulation engine settings: `fedsilo.simulations.engine`,
10 ms reply poll), alternating fedsilo and Flower for every (sites, partition) cell.
The parent reads each child's per-round lines on stderr (``round 2/3 ...``) as they come:

- time to first round: from the child's start to its ``round 1`` line (interpreter and
  engine start-up, fedsilo's all-site handshake, round 1);
- per-round wall: ``(t_last - t_first) / (rounds - 1)``;
- peak memory: the largest sum of RSS over the child and all its descendants (Ray's
  processes), sampled every 0.25 s.

The bare app's sites take their rows from the same once-per-process partition fedsilo's
simulated sites slice (`fedsilo.tasks.partition.site_assignment`), so neither side pays
for re-partitioning. ``--profile DIR`` also runs one fedsilo child at the largest size
with cProfile on the ServerApp's thread (the driver's own work) and writes the top of it.

    python benchmarks/bench_scale.py [--sizes 10,200,1000] [--partitions iid,dirichlet:0.5,shards:1]
        [--rounds 3] [--fraction 0.1] [--pairs 1] [--out benchmarks/results/scale.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEDSILO = [sys.executable, "-c", "import sys; from fedsilo.cli import main; sys.exit(main())"]
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
         "RAY_USAGE_STATS_ENABLED": "0"}


# ----------------------------------------------------------------- the bare Flower child
def flower_child(sites: int, partition: str, rounds: int, fraction: float, seed: int) -> int:
    """One bare Flower federation (see the module docstring); a line per round on stderr."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedsilo.server.app import tune_grid
    from fedsilo.simulations.engine import run_on_simulation_engine
    from fedsilo.simulations.models import evaluate_arrays, get_weights, make_mlp, set_weights
    from fedsilo.simulations.trainer import TorchTrainer
    from fedsilo.tasks.datasets import load_dataset
    from fedsilo.tasks.partition import PartitionSpec

    spec = str(PartitionSpec.parse(partition))
    hidden, lr, batch_size = 64, 0.1, 32
    client_app = ClientApp()
    trainers: dict[int, TorchTrainer] = {}

    def trainer_for(pid: int) -> TorchTrainer:
        from fedsilo.tasks.partition import site_assignment  # once per worker process

        if pid not in trainers:
            data = load_dataset("digits", seed=seed)
            rows = site_assignment("digits", seed, sites, spec, seed)[0][pid]
            trainers[pid] = TorchTrainer(data.x_train[rows], data.y_train[rows],
                                         data.num_classes, seed=seed * 100_003 + pid,
                                         batch_size=batch_size)
        return trainers[pid]

    def array(value: np.ndarray) -> Array:
        return Array(np.ascontiguousarray(value))

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        trainer = trainer_for(int(context.node_config["partition-id"]))
        weights = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        fit = trainer.fit(weights, {"server_round": int(msg.content["config"]["server-round"]),
                                    "lr": lr, "local_epochs": 1})
        return Message(RecordDict({
            "arrays": ArrayRecord({k: array(v) for k, v in fit.weights.items()}),
            "metrics": MetricRecord({"num-examples": fit.num_examples, **fit.metrics}),
        }), reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        tune_grid(grid)  # the engine settings fedsilo's ServerApp uses
        data = load_dataset("digits", seed=seed)
        model = make_mlp(data.num_features, data.num_classes, hidden=hidden, seed=seed)
        strategy = FedAvg(fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=1,
                          min_available_nodes=sites)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            set_weights(model, {k: v.numpy() for k, v in arrays.items()})
            loss, acc = evaluate_arrays(model, data.x_test, data.y_test)
            if server_round > 0:
                print(f"round {server_round}/{rounds}  acc {acc:.4f}", file=sys.stderr, flush=True)
            return MetricRecord({"loss": loss, "accuracy": acc})

        initial = ArrayRecord({k: array(v) for k, v in get_weights(model).items()})
        strategy.start(grid, initial, num_rounds=rounds, evaluate_fn=evaluate)

    run_on_simulation_engine(server_app, client_app, sites)
    return 0


# --------------------------------------------------------- fedsilo under the profiler
def profiled_fedsilo_child(prof_path: str, argv: list[str]) -> int:
    """``fedsilo`` with ``argv`` under cProfile: one profile per driver thread (the
    ServerApp's, Flower's engine workers', the main one), written to ``prof_path`` +
    ``.<thread name>`` (cProfile follows one thread only)."""
    import cProfile
    import re

    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        try:
            prof.runcall(original, self)
        finally:
            prof.dump_stats(f"{prof_path}.{re.sub(r'[^A-Za-z0-9_-]', '_', self.name)}")

    threading.Thread.run = run  # type: ignore[method-assign]
    from fedsilo.cli import main

    prof = cProfile.Profile()
    try:
        return int(prof.runcall(main, argv) or 0)
    finally:
        prof.dump_stats(f"{prof_path}.main")


# ------------------------------------------------------------------------- the parent
@dataclass
class Sample:
    system: str
    sites: int
    partition: str
    first_round_s: float | None
    per_round_s: float | None
    peak_rss_mb: float
    ok: bool
    note: str = ""


def _tree_rss(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):  # a process that just ended
            total += p.memory_info().rss
    return total / 2**20


def run_child(cmd: list[str], system: str, sites: int, partition: str, rounds: int,
              timeout: float) -> Sample:
    """Run one child; time its round lines and sample its process tree's memory."""
    env = {**os.environ, **QUIET}
    start = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env, start_new_session=True)
    stamps: list[float] = []
    tail: list[str] = []
    peak = [0.0]
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], _tree_rss(child.pid))

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    killer = threading.Timer(timeout, lambda: os.killpg(child.pid, signal.SIGKILL))
    killer.start()
    assert child.stderr is not None
    for line in child.stderr:
        if line.startswith("round "):
            stamps.append(time.monotonic() - start)
        tail = (tail + [line.rstrip()])[-5:]
    rc = child.wait()
    killer.cancel()
    done.set()
    sampler.join()
    ok = rc == 0 and len(stamps) == rounds
    per = (stamps[-1] - stamps[0]) / (rounds - 1) if len(stamps) >= 2 else None
    return Sample(system, sites, partition, stamps[0] if stamps else None, per, peak[0], ok,
                  "" if ok else f"rc={rc}: {' | '.join(tail)[-300:]}")


def fedsilo_cmd(sites: int, partition: str, rounds: int, fraction: float, out: str,
                run_id: str) -> list[str]:
    return [*FEDSILO, "simulate", "--sites", str(sites), "--partition", partition,
            "--fraction", str(fraction), "--rounds", str(rounds), "--eval-every", "0",
            "--out", out, "--run-id", run_id]


def flower_cmd(sites: int, partition: str, rounds: int, fraction: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", "flower", "--sites",
            str(sites), "--partition", partition, "--rounds", str(rounds), "--fraction",
            str(fraction)]


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def table(samples: list[Sample], sizes: list[int], partitions: list[str]) -> list[str]:
    lines = ["| sites | partition | time to round 1, s (fedsilo / Flower, ratio) | "
             "per-round wall, s (fedsilo / Flower, ratio) | peak RSS, MB (fedsilo / Flower) | "
             "completed |",
             "|---|---|---|---|---|---|"]

    def med(system: str, n: int, p: str, field: str) -> float | None:
        vals = [getattr(s, field) for s in samples
                if (s.system, s.sites, s.partition) == (system, n, p) and getattr(s, field) is not None]
        return statistics.median(vals) if vals else None

    for n in sizes:
        for p in partitions:
            f1, b1 = med("fedsilo", n, p, "first_round_s"), med("flower", n, p, "first_round_s")
            fr, br = med("fedsilo", n, p, "per_round_s"), med("flower", n, p, "per_round_s")
            fm, bm = med("fedsilo", n, p, "peak_rss_mb"), med("flower", n, p, "peak_rss_mb")
            cell = [s for s in samples if (s.sites, s.partition) == (n, p)]
            done = sum(s.ok for s in cell)
            lines.append(f"| {n} | {p} | {_fmt(f1)} / {_fmt(b1)}, {_ratio(f1, b1)} | "
                         f"{_fmt(fr, '.3f')} / {_fmt(br, '.3f')}, {_ratio(fr, br)} | "
                         f"{_fmt(fm, '.0f')} / {_fmt(bm, '.0f')} | {done}/{len(cell)} |")
    return lines


def profile_top(prof_path: str, limit: int = 18) -> list[str]:
    """The top (own time, lock waits included) of the ServerApp's thread and of Flower's
    engine thread that hands messages to the workers (`add_messages_to_queue`), from the
    per-thread profiles `profiled_fedsilo_child` wrote."""
    import io
    import pstats

    out: list[str] = []
    for f in sorted(Path(prof_path).parent.glob(Path(prof_path).name + ".*")):
        if not any(k in f.name for k in ("server_th", "add_messages_to_queue")):
            continue
        buf = io.StringIO()
        stats = pstats.Stats(str(f), stream=buf)
        stats.sort_stats("tottime").print_stats(limit)
        total = stats.total_tt  # type: ignore[attr-defined]
        out += [f"### thread {f.name.split('.', 2)[-1]} ({total:.1f} s)", *[
            line[:200] for line in buf.getvalue().splitlines() if line.strip()][-limit - 1:]]
    return out


def parent(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.sizes.split(",")]
    partitions = args.partitions.split(",")
    samples: list[Sample] = []
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for pair in range(args.pairs):
            for n in sizes:
                for p in partitions:
                    order = ["fedsilo", "flower"] if (pair + len(samples) // 2) % 2 == 0 \
                        else ["flower", "fedsilo"]
                    for system in order:
                        cmd = (fedsilo_cmd(n, p, args.rounds, args.fraction, tmp,
                                           f"s{n}-{p.replace(':', '')}-{pair}")
                               if system == "fedsilo" else flower_cmd(n, p, args.rounds, args.fraction))
                        s = run_child(cmd, system, n, p, args.rounds, args.timeout)
                        samples.append(s)
                        loads.append(os.getloadavg())
                        print(s, file=sys.stderr, flush=True)
        prof_lines: list[str] = []
        if args.profile:
            n, p = max(sizes), partitions[0]
            prof = str(Path(args.profile) / f"fedsilo-{n}.prof")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "fedsilo-profile",
                   "--prof", prof, "--",
                   *fedsilo_cmd(n, p, args.rounds, args.fraction, tmp, "profiled")[len(FEDSILO):]]
            s = run_child(cmd, "fedsilo-profiled", n, p, args.rounds, args.timeout)
            print(s, file=sys.stderr, flush=True)
            if Path(prof).exists():
                prof_lines = profile_top(prof)
    write_report(args, samples, sizes, partitions, loads, prof_lines)
    return 0 if all(s.ok for s in samples) else 1


def write_report(args: argparse.Namespace, samples: list[Sample], sizes: list[int],
                 partitions: list[str], loads: list[tuple[float, float, float]],
                 prof_lines: list[str]) -> None:
    lo = min(x[0] for x in loads)
    hi = max(x[0] for x in loads)
    lines = [
        "## Scale: fedsilo vs a bare Flower app, 10 / 200 / 1,000 sites",
        "",
        f"Command: `python benchmarks/bench_scale.py --sizes {args.sizes} --partitions "
        f"{args.partitions} --rounds {args.rounds} --fraction {args.fraction} --pairs {args.pairs}`"
        " (digits, MLP 64, 1 local epoch, Ray simulation engine on this 2-core machine; each "
        "figure one separate process, fedsilo and Flower alternating; `fedsilo simulate "
        "--eval-every 0` with lineage on). Median over the pairs.",
        "",
        f"Load average (1 min) during the run: {lo:.2f} to {hi:.2f} (other sessions share the "
        "machine: ratios, not absolute times).",
        "",
        *table(samples, sizes, partitions),
        "",
        "Targets: every size and partition completes; per-round wall <= 1.15x Flower; time to "
        "first round <= 1.3x Flower at 1,000 sites.",
        "",
        "All runs:",
        "",
        *[f"- {s.system} {s.sites} {s.partition}: first {_fmt(s.first_round_s)} s, per round "
          f"{_fmt(s.per_round_s, '.3f')} s, peak {s.peak_rss_mb:.0f} MB"
          f"{'' if s.ok else ', FAILED ' + s.note}" for s in samples],
    ]
    if prof_lines:
        lines += ["", "cProfile of the fedsilo ServerApp thread (largest size, first partition):",
                  "", "```", *prof_lines, "```"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,200,1000")
    parser.add_argument("--partitions", default="iid,dirichlet:0.5,shards:1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="per child, seconds")
    parser.add_argument("--profile", default="", help="directory: also profile one fedsilo run")
    parser.add_argument("--out", default=str(HERE / "results" / "scale.md"))
    parser.add_argument("--child", choices=["flower", "fedsilo-profile"], default="")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prof", default="")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    if args.child == "flower":
        return flower_child(args.sites, args.partition, args.rounds, args.fraction, args.seed)
    if args.child == "fedsilo-profile":
        return profiled_fedsilo_child(args.prof, args.rest)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

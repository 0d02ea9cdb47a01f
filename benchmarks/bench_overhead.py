"""Overhead of fedsilo over a bare Flower app, as a user gets it: separate processes.

Each measurement is one whole process, started as a user starts it: ``fedsilo simulate``
(its defaults: digits, 10 sites, dirichlet:0.5, MLP, FedAvg, 20 rounds, lineage and
signatures on, each sampled site scoring the model every round) against
``benchmarks/flower_baseline.py`` (Flower 1.42's FedAvg ServerApp and a plain ClientApp:
same engine, task, partition, model, local training; with ``--evaluate-sites`` its sites
score the model on the same held-out rows). The two alternate, their order swapped from
pair to pair, so a shared machine's load falls on both alike.

The times come from each process's own output: both print one line per round to stderr as
the round ends (``round 3/20 ...``; ``fedsilo simulate`` does so whenever stderr is not a
terminal), and this script stamps each line as it arrives (`time.monotonic`), as it
stamps the start and the exit of the process. Per process:

- per-round wall: (last round's line - first round's line) / (rounds - 1);
- per-round wall after round 10: the same from round 10's line on (with more than 11
  rounds), once the engine's workers have built every site;
- time to first round: start -> round 1's line (imports, engine start, handshake, round 1);
- last round to exit: the last round's line -> the process has exited (fedsilo: final
  model, closing record, outputs and report; both: the engine's shutdown).

Two model sizes: the default MLP (64 hidden units, 4,810 parameters) and a 10^6-parameter
one (``--hidden 13333``: 64*13333 + 13333 + 13333*10 + 10 = 999,985 parameters). Two
comparisons: ``default`` (fedsilo's default against Flower with the sites' evaluation)
and ``noeval`` (``--eval-every 0`` against Flower without it: one message per site and
round on both sides).

    python benchmarks/bench_overhead.py [--pairs 3] [--rounds 20] [--sizes 64,13333]
        [--variants default,noeval] [--out benchmarks/results/overhead.md]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUND_LINE = re.compile(r"^round (\d+)/(\d+)\b")
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "RAY_USAGE_STATS_ENABLED": "0"}
PARAMS = {64: "4,810", 13333: "999,985"}
WARM = 10
"""Rounds after which `Timing.per_round_warm` counts (with more than WARM + 1 rounds)."""


@dataclass
class Timing:
    """One process: its start, each round line's arrival and its exit (monotonic s)."""

    start: float
    rounds: list[float] = field(default_factory=list)
    exit: float = 0.0
    code: int = 0

    @property
    def per_round(self) -> float:
        return (self.rounds[-1] - self.rounds[0]) / (len(self.rounds) - 1)

    @property
    def per_round_warm(self) -> float:
        """Per-round wall after round ``WARM`` (the engine's workers have seen every site)."""
        warm = self.rounds[WARM - 1:] if len(self.rounds) > WARM + 1 else self.rounds
        return (warm[-1] - warm[0]) / (len(warm) - 1)

    @property
    def first_round(self) -> float:
        return self.rounds[0] - self.start

    @property
    def to_exit(self) -> float:
        return self.exit - self.rounds[-1]


def timed_process(argv: list[str], rounds: int, attempts: int = 3) -> Timing:
    """Run ``argv``; stamp each ``round N/M`` line of its stderr as it arrives. A run
    that failed before its first round (Ray's start timing out on an overloaded machine)
    is run again, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            return _timed_once(argv, rounds)
        except _NoRounds as exc:
            if attempt == attempts:
                raise RuntimeError(str(exc)) from None
            print(f"retrying (no round ran): {str(exc)[-300:]}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


class _NoRounds(RuntimeError):
    """The process ended before its first round."""


def _timed_once(argv: list[str], rounds: int) -> Timing:
    env = {**os.environ, **ENV}
    timing = Timing(start=time.monotonic())
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, bufsize=1)
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        now = time.monotonic()
        if ROUND_LINE.match(line):
            timing.rounds.append(now)
        else:
            tail = [*tail[-20:], line]
    timing.code = proc.wait()
    timing.exit = time.monotonic()
    if timing.code != 0 or len(timing.rounds) != rounds:
        raise (_NoRounds if not timing.rounds else RuntimeError)(f"{' '.join(argv)}: exit {timing.code}, {len(timing.rounds)} of "
                           f"{rounds} round lines\n{''.join(tail)}")
    return timing


def commands(variant: str, hidden: int, rounds: int, out: str) -> dict[str, list[str]]:
    """The two processes of one comparison: fedsilo simulate and the bare Flower app."""
    fedsilo = [str(Path(sys.executable).with_name("fedsilo")), "simulate", "--out", out,
               "--rounds", str(rounds)]
    flower = [sys.executable, str(HERE / "flower_baseline.py"), "--rounds", str(rounds)]
    if hidden != 64:
        fedsilo += ["--hidden", str(hidden)]
        flower += ["--hidden", str(hidden)]
    if variant == "noeval":
        fedsilo += ["--eval-every", "0"]
    else:
        flower += ["--evaluate-sites"]
    return {"fedsilo": fedsilo, "flower": flower}


def load() -> str:
    return os.popen("uptime").read().strip().split("load average:")[-1].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sizes", default="64,13333", help="hidden units of the MLP, comma-separated")
    parser.add_argument("--variants", default="default,noeval")
    parser.add_argument("--out", default="benchmarks/results/overhead.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    results: dict[tuple[str, int], dict[str, list[Timing]]] = {
        (v, h): {"fedsilo": [], "flower": []} for v in variants for h in sizes}
    loads = [load()]
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for key, runs in results.items():
                cmds = commands(key[0], key[1], args.rounds, tmp)
                order = ["fedsilo", "flower"] if pair % 2 == 0 else ["flower", "fedsilo"]
                for system in order:
                    t = timed_process(cmds[system], args.rounds)
                    runs[system].append(t)
                    print(f"pair {pair} {key} {system}: {t.per_round:.4f} s/round, first "
                          f"{t.first_round:.2f} s, exit {t.to_exit:.2f} s", file=sys.stderr,
                          flush=True)
            loads.append(load())
            text = report(results, args, loads)
            Path(args.out).write_text(text)  # after every pair: a stopped run keeps its pairs
    print(text)
    return 0


def report(results: dict[tuple[str, int], dict[str, list[Timing]]], args: argparse.Namespace,
           loads: list[str]) -> str:
    """The markdown table: medians over the pairs, ratios fedsilo / Flower."""
    lines = [
        "## Overhead: fedsilo simulate vs a bare Flower app, separate processes",
        "",
        f"Command: `python benchmarks/bench_overhead.py --pairs {args.pairs} --rounds "
        f"{args.rounds} --sizes {args.sizes} --variants {args.variants}`. Each figure is the "
        f"median over the {len(loads) - 1} pairs run; each run is its own process, fedsilo and Flower alternating "
        "(order swapped every pair). Times from each process's own round lines on stderr, "
        "stamped as they arrive. Load average (1, 5, 15 min) before and after each pair: "
        + " -> ".join(f"`{x}`" for x in loads) + ".",
        "",
        "| comparison | model | metric | fedsilo (s) | Flower (s) | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    targets = {"per_round": "<= 1.10", "per_round_warm": "", "first_round": "",
               "to_exit": "<= 1.2"}
    names = {"per_round": "per-round wall", "per_round_warm": f"per-round wall after round {WARM}",
             "first_round": "time to first round", "to_exit": "last round to exit"}
    for (variant, hidden), runs in results.items():
        label = ("default (sites evaluate)" if variant == "default"
                 else "--eval-every 0 (one message per site)")
        for metric, name in names.items():
            fed = statistics.median(getattr(t, metric) for t in runs["fedsilo"])
            flw = statistics.median(getattr(t, metric) for t in runs["flower"])
            lines.append(f"| {label} | {PARAMS.get(hidden, f'hidden {hidden}')} params | {name} | "
                         f"{fed:.4f} | {flw:.4f} | {fed / flw:.2f} | {targets[metric]} |")
    lines += ["", "Every run (fedsilo / Flower, per pair): per-round s; first round s; exit s", ""]
    for (variant, hidden), runs in results.items():
        for system in ("fedsilo", "flower"):
            lines.append(f"- {variant}, hidden {hidden}, {system}: "
                         + "; ".join(f"{t.per_round:.4f} / {t.first_round:.2f} / {t.to_exit:.2f}"
                                     for t in runs[system]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

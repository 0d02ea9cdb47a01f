"""Overhead of fedsilo over a bare Flower app on the default scenario, in one run.

Runs `fedsilo simulate`'s default scenario (digits, 10 sites, dirichlet:0.5, MLP, FedAvg,
20 rounds) through fedsilo (with lineage, signatures, checkpoints) and through a bare
Flower app (Flower's FedAvg, same model, data, partitions, local training and rounds),
alternating REPEATS times. Wall time per round excludes engine start-up and the first
round (actor warm-up): (t_last - t_first) / (rounds - 1). Both ServerApps poll the
engine for replies every 10 ms (`fedsilo.server.app.tune_grid`; Flower's default is
100 ms, which quantises round times to 0.1 s ticks). Also runs fedsilo without
lineage (``--no-lineage``) for the lineage-overhead figure. The like-for-like runs turn
per-site evaluation off (``eval_every = 0``): the bare app sends one train message per
sampled site per round, and so do they. fedsilo's default (every sampled site also scores
the new model: one evaluate message more per site and round) is timed beside them.

    python benchmarks/bench_overhead.py [--repeats 2] [--out benchmarks/results/overhead.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flower_baseline import run_flower_baseline  # noqa: E402

from fedsilo.server.config import RunConfig  # noqa: E402
from fedsilo.simulations.runner import run_federation  # noqa: E402


def per_round(times: list[float]) -> float:
    return (times[-1] - times[0]) / (len(times) - 1)


def fedsilo_times(config: RunConfig) -> list[float]:
    stamps: list[float] = []
    run_federation(config, on_round=lambda _s: stamps.append(time.perf_counter()))
    return stamps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/overhead.md")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"flower": [], "fedsilo": [], "fedsilo_nolineage": [],
                                       "fedsilo_default": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            base = {"rounds": args.rounds, "out": tmp, "eval_every": 0}
            results["flower"].append(per_round(run_flower_baseline(RunConfig.load(None, base))))
            results["fedsilo"].append(per_round(fedsilo_times(
                RunConfig.load(None, {**base, "run_id": f"with-{rep}"}))))
            results["fedsilo_nolineage"].append(per_round(fedsilo_times(
                RunConfig.load(None, {**base, "run_id": f"without-{rep}", "lineage": False}))))
            results["fedsilo_default"].append(per_round(fedsilo_times(
                RunConfig.load(None, {**base, "run_id": f"default-{rep}", "eval_every": 1}))))
            print({k: [round(x, 4) for x in v] for k, v in results.items()}, file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    lines = [
        "## Overhead: fedsilo vs a bare Flower app (default scenario)",
        "",
        f"Command: `python benchmarks/bench_overhead.py --repeats {args.repeats} --rounds {args.rounds}` "
        "(digits, 10 sites, dirichlet:0.5, MLP, FedAvg, 1 local epoch, Ray simulation engine, "
        "2 CPUs, both ServerApps polling the engine every 10 ms). Per-round wall time excludes "
        "engine start-up and round 1; median of the repeats.",
        "",
        "| system | s / round | ratio to Flower | target |",
        "|---|---|---|---|",
        f"| bare Flower app (FedAvg) | {med['flower']:.4f} | 1.00 | |",
        f"| fedsilo simulate --eval-every 0 (lineage on) | {med['fedsilo']:.4f} | "
        f"{med['fedsilo'] / med['flower']:.2f} | <= 1.10 |",
        f"| fedsilo simulate --eval-every 0 --no-lineage | {med['fedsilo_nolineage']:.4f} | "
        f"{med['fedsilo_nolineage'] / med['flower']:.2f} | |",
        f"| fedsilo simulate (default: each sampled site also scores the model) | "
        f"{med['fedsilo_default']:.4f} | {med['fedsilo_default'] / med['flower']:.2f} | "
        "informational (twice the messages) |",
        "",
        f"Lineage overhead per round (lineage on / off): "
        f"{med['fedsilo'] / med['fedsilo_nolineage']:.3f} (target <= 1.02).",
        "",
        "All repeats (s/round): " + "; ".join(f"{k}: {', '.join(f'{x:.4f}' for x in v)}" for k, v in results.items()),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

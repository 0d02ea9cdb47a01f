"""Whole-round cost of SecAgg+ in the real pipeline: `fedsilo simulate` rounds with and without --secagg.

Same federation (digits, iid, an MLP with --hidden 1500, i.e. d = 112,510 parameters,
about 10^5), same seed, every site every round; per-round wall time (rounds 2..R, so
start-up is excluded) of plain weighted FedAvg and of SecAgg+ FedAvg, alternating, on
the in-process grid (the project's ServerApp and ClientApp without Ray, sites run one
after another in this process, so the round time is the sum of all sites' and the
server's work). Reports the ratio secagg / plain per n.

    python benchmarks/bench_secagg_rounds.py [--sites 10 50] [--rounds 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedsilo.server.config import RunConfig
from fedsilo.simulations.runner import run_federation


def per_round(config: RunConfig) -> float:
    stamps: list[float] = []
    run_federation(config, engine="inprocess", on_round=lambda _s: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/secagg_rounds.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sites:
            plain, secure = [], []
            for rep in range(args.repeats):
                base = {"sites": n, "rounds": args.rounds, "partition": "iid", "hidden": 1500,
                        "out": tmp, "lineage": True}
                plain.append(per_round(RunConfig.load(None, {**base, "run_id": f"p{n}-{rep}"})))
                secure.append(per_round(RunConfig.load(None, {**base, "run_id": f"s{n}-{rep}",
                                                              "secagg.enabled": True})))
                print(n, plain[-1], secure[-1], file=sys.stderr)
            p, s = statistics.median(plain), statistics.median(secure)
            rows.append((n, p, s, s / p))
    lines = [
        "## SecAgg+ whole-round cost in the pipeline (issue 6, point 7)",
        "",
        f"Command: `python benchmarks/bench_secagg_rounds.py --sites {' '.join(map(str, args.sites))} "
        f"--rounds {args.rounds} --repeats {args.repeats}` (digits, iid, MLP hidden 1500: d = 112,510; "
        "every site every round; the project's ServerApp/ClientApp on the in-process grid, so a "
        "round's wall time is all sites' training + protocol work + the server's; median over repeats, "
        "rounds 2..R).",
        "",
        "| n sites | plain FedAvg s/round | SecAgg+ FedAvg s/round | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for n, p, s, r in rows:
        lines.append(f"| {n} | {p:.3f} | {s:.3f} | {r:.2f} | <= 2 |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

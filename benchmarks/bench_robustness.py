"""Robustness: final test accuracy of every aggregator under every attack.

20 sites of which 4 malicious, IID and dirichlet:0.5 partitions, in-process federations
(`run_federation(config, engine="inprocess")`, the project's ServerApp/ClientApp without
Ray). Results are cached in a JSON file so the grid can be built in several short
invocations (e.g. one partition each); every invocation re-renders the markdown table
from everything cached.

Run (the two partitions may run in parallel with separate caches, then merged):
  python benchmarks/bench_robustness.py --partitions iid
  python benchmarks/bench_robustness.py --partitions dirichlet:0.5 \
      --cache benchmarks/results/robustness_dirichlet.json --out /dev/null
  python benchmarks/bench_robustness.py --partitions --merge benchmarks/results/robustness_dirichlet.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fedsilo.server.config import RunConfig  # noqa: E402
from fedsilo.simulations.runner import run_federation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
AGGREGATORS = [
    "mean", "median", "trimmed_mean:beta=0.2", "krum:f=4", "multi_krum:f=4", "bulyan:f=4",
    "geometric_median", "centered_clipping:tau=0.3,iterations=3", "norm_bounding:max_norm=0.5",
    "fltrust",
]
ATTACKS = ["none", "sign_flip", "gaussian", "scaling", "label_flip", "alie", "ipm", "min_max"]


def key(partition: str, aggregator: str, attack: str) -> str:
    return f"{partition}|{aggregator}|{attack}"


def run_one(args: argparse.Namespace, partition: str, aggregator: str, attack: str, out: str) -> float:
    overrides = {
        "dataset": args.dataset, "sites": args.sites, "rounds": args.rounds,
        "partition": partition, "seed": args.seed, "aggregator": aggregator,
        "attack": None if attack == "none" else attack,
        "malicious": 0 if attack == "none" else args.malicious,
        "lineage": False, "out": out, "run_id": f"r{zlib.crc32(key(partition, aggregator, attack).encode()):08x}",
    }
    run = run_federation(RunConfig.load(None, overrides), engine="inprocess")
    return float(run.final_accuracy or 0.0)


def render(cache: dict[str, float], args: argparse.Namespace, commands: list[str]) -> str:
    lines = [
        "## Robustness (issue 4, point 6)",
        "",
        f"{args.dataset}, {args.sites} sites of which {args.malicious} malicious (sites chosen by "
        f"the simulation's seeded scenario), {args.rounds} rounds, seed {args.seed}, in-process "
        "engine, default attack parameters, FedAvg server step (lr 1). Cell = final test "
        "accuracy; in brackets the ratio to FedAvg (`mean`) without attack on the same partition.",
        "",
        "Commands (results cached in `benchmarks/results/robustness.json`):",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    partitions = sorted({k.split("|")[0] for k in cache})
    for part in partitions:
        ref = cache.get(key(part, "mean", "none"))
        lines += [f"### partition {part}" + (f" (FedAvg without attack: {ref:.3f})" if ref else ""), ""]
        lines.append("| aggregator | " + " | ".join(ATTACKS) + " | worst ratio |")
        lines.append("|---|" + "---:|" * (len(ATTACKS) + 1))
        for agg in AGGREGATORS:
            ratios = [cache[key(part, agg, a)] / ref for a in ATTACKS[1:]
                      if ref and key(part, agg, a) in cache]
            cells = []
            for att in ATTACKS:
                acc = cache.get(key(part, agg, att))
                if acc is None:
                    cells.append("")
                else:
                    cells.append(f"{acc:.3f} ({acc / ref:.2f})" if ref else f"{acc:.3f}")
            worst = f"{min(ratios):.2f}" if ratios else ""
            lines.append(f"| {agg} | " + " | ".join(cells) + f" | {worst} |")
        if ref:
            best = []
            for att in ATTACKS[1:]:
                accs = {agg: cache.get(key(part, agg, att)) for agg in AGGREGATORS}
                accs = {a: v for a, v in accs.items() if v is not None}
                if accs:
                    top = max(accs, key=accs.get)
                    best.append(f"{att}: {top} {accs[top] / ref:.2f}")
            lines += ["", "Best ratio per attack: " + "; ".join(best) + "."]
        lines.append("")
    lines += _summary(cache, partitions)
    return "\n".join(lines)


def _summary(cache: dict[str, float], partitions: list[str]) -> list[str]:
    """Which aggregators keep >= 0.8 of FedAvg's no-attack accuracy under every attack on
    every partition, and whether every attack has an aggregator keeping >= 0.9."""
    worst: dict[str, float] = {}
    covered: dict[str, bool] = {}
    for part in partitions:
        ref = cache.get(key(part, "mean", "none"))
        if not ref:
            continue
        for agg in AGGREGATORS:
            ratios = [cache[key(part, agg, a)] / ref for a in ATTACKS[1:] if key(part, agg, a) in cache]
            if ratios:
                worst[agg] = min(worst.get(agg, 1e9), min(ratios))
        for att in ATTACKS[1:]:
            best = max((cache[key(part, a, att)] / ref for a in AGGREGATORS
                        if key(part, a, att) in cache), default=0.0)
            covered[att] = covered.get(att, True) and best >= 0.9
    keep = [f"{a} ({w:.2f})" for a, w in sorted(worst.items(), key=lambda x: -x[1]) if w >= 0.8]
    missed = [a for a, ok in covered.items() if not ok]
    return [
        "### Summary",
        "",
        "Worst ratio over all attacks and partitions, aggregators at >= 0.8: "
        + (", ".join(keep) if keep else "none") + ".",
        "Attacks where no aggregator keeps >= 0.9 on some partition: "
        + (", ".join(missed) if missed else "none") + ".",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", nargs="*", default=["iid", "dirichlet:0.5"])
    parser.add_argument("--aggregators", nargs="+", default=AGGREGATORS)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--malicious", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=RESULTS / "robustness.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "robustness.md")
    parser.add_argument("--rerun", action="store_true", help="ignore cached results")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="other cache files (e.g. from a parallel invocation) merged in")
    args = parser.parse_args()
    command = "python benchmarks/bench_robustness.py " + " ".join(sys.argv[1:])
    store = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    cache: dict[str, float] = store.get("accuracy", {})
    commands: list[str] = store.get("commands", [])
    for other in args.merge:
        extra = json.loads(other.read_text())
        cache.update(extra.get("accuracy", {}))
        commands += [c for c in extra.get("commands", []) if c not in commands]
    with tempfile.TemporaryDirectory() as out:
        for part in args.partitions:
            for agg in args.aggregators:
                for att in args.attacks:
                    k = key(part, agg, att)
                    if k in cache and not args.rerun:
                        continue
                    t0 = time.perf_counter()
                    cache[k] = run_one(args, part, agg, att, out)
                    print(f"{k}: {cache[k]:.3f} ({time.perf_counter() - t0:.1f}s)", flush=True)
                    args.cache.parent.mkdir(parents=True, exist_ok=True)
                    args.cache.write_text(json.dumps(
                        {"accuracy": cache, "commands": commands}, indent=1, sort_keys=True))
    if command not in commands:
        commands.append(command)
    args.cache.write_text(json.dumps({"accuracy": cache, "commands": commands}, indent=1, sort_keys=True))
    text = render(cache, args, commands)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

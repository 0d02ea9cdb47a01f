"""Robustness: final test accuracy of every aggregator under every attack.

20 sites of which 4 malicious, IID and dirichlet:0.5 partitions, in-process federations
(`run_federation(config, engine="inprocess")`, the project's ServerApp/ClientApp without
Ray), on each dataset of `REPORTED` (digits, and MNIST-1D as the task that does not
saturate). Results are cached in one JSON file per (dataset, rounds) so the grid can be
built in several short or interrupted invocations; every invocation re-renders the
markdown (one section per reported dataset, then the targets table) from the caches.

Run (one simulation at a time; each command resumes from its cache):
  python benchmarks/bench_robustness.py --dataset digits
  python benchmarks/bench_robustness.py --dataset mnist1d
  python benchmarks/bench_robustness.py --dataset digits --partitions     # only re-render
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
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fedsilo.simulations.config import SimulationConfig  # noqa: E402
from fedsilo.simulations.runner import run_federation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
AGGREGATORS = [
    "mean", "median", "trimmed_mean:beta=0.2", "krum:f=4", "multi_krum:f=4", "bulyan:f=4",
    "geometric_median", "centered_clipping:tau=0.3,iterations=3", "norm_bounding:max_norm=0.5",
    "fltrust",
]
ATTACKS = ["none", "sign_flip", "gaussian", "scaling", "label_flip", "alie", "ipm", "min_max"]
PARTITIONS = ["iid", "dirichlet:0.5"]

# The documented default robust configuration (README, "Strategies"): one aggregator
# spec used for every attack and partition, never tuned per cell.
DEFAULT_ROBUST = "fltrust"

# Local training per dataset, chosen so that FedAvg without attack is well trained (near
# its plateau) when the grid ends. digits: at 20 rounds FedAvg was still climbing
# (+0.3 points a round on dirichlet:0.5), so ratios measured convergence speed rather
# than robustness; at 40 it is within 2 points of its 60-round accuracy. mnist1d: with
# the default lr 0.1 and one local epoch FedAvg reaches only 0.33 after 60 rounds; with
# lr 0.5 and 3 local epochs it is near the MLP's plateau (~0.55-0.58, the same MLP
# trained centrally peaks at ~0.60) after 40 rounds, far from saturating the task.
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"rounds": 40, "lr": 0.1, "local_epochs": 1},
    "mnist1d": {"rounds": 40, "lr": 0.5, "local_epochs": 3},
}
REPORTED = ["digits", "mnist1d"]
NOTES = {
    "mnist1d": "MNIST-1D (generated offline by the `mnist1d` package, its default arguments "
    "and seed). FedAvg ends near the MLP's plateau: the same MLP trained centrally (SGD lr "
    "0.1, 200 epochs) peaks at ~0.60 test accuracy, and the MNIST-1D paper reports CNNs above 0.9, "
    "so the task does not saturate. The aggregator specs are the digits ones, unchanged: "
    "`centered_clipping:tau=0.3` and `norm_bounding:max_norm=0.5` were sized for digits' "
    "update norms and clip MNIST-1D's larger honest updates (lr 0.5, 3 local epochs) too, "
    "the likely reason they lose accuracy even without attack.",
}
RATIO_ANY, RATIO_DEFAULT = 0.9, 0.8  # issue 4, point 6 targets


def key(partition: str, aggregator: str, attack: str) -> str:
    return f"{partition}|{aggregator}|{attack}"


def cache_path(dataset: str, rounds: int) -> Path:
    """One cache per (dataset, rounds). digits at 20 rounds keeps its original file name,
    so the results cached before per-dataset caches existed stay valid."""
    if dataset == "digits" and rounds == 20:
        return RESULTS / "robustness.json"
    return RESULTS / f"robustness_{dataset}_r{rounds}.json"


def settings_meta(args: argparse.Namespace) -> dict[str, Any]:
    """Everything besides (partition, aggregator, attack) that a cached accuracy depends on."""
    return {"dataset": args.dataset, "rounds": args.rounds, "lr": args.lr,
            "local_epochs": args.local_epochs, "sites": args.sites,
            "malicious": args.malicious, "seed": args.seed}


def load_store(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"accuracy": {}, "seconds": {}, "commands": []}
    store = json.loads(path.read_text())
    if "meta" not in store:  # written before caches carried their settings: digits, 20 rounds
        store["meta"] = {"dataset": "digits", "rounds": 20, "lr": 0.1, "local_epochs": 1,
                         "sites": 20, "malicious": 4, "seed": 0}
    store.setdefault("seconds", {})
    store.setdefault("commands", [])
    return store


def run_one(args: argparse.Namespace, partition: str, aggregator: str, attack: str, out: str) -> float:
    overrides = {
        "dataset": args.dataset, "sites": args.sites, "rounds": args.rounds,
        "lr": args.lr, "local_epochs": args.local_epochs,
        "partition": partition, "seed": args.seed, "aggregator": aggregator,
        "attack": None if attack == "none" else attack,
        "malicious": 0 if attack == "none" else args.malicious,
        # the grid measures every rule against every attack, including past a rule's
        # stated tolerance (e.g. --malicious 6 against krum:f=4): run those too
        "allow_overreach": True,
        "lineage": False, "out": out, "run_id": f"r{zlib.crc32(key(partition, aggregator, attack).encode()):08x}",
    }
    run = run_federation(SimulationConfig.load(None, overrides), engine="inprocess")
    return float(run.final_accuracy or 0.0)


def render_dataset(store: dict[str, Any], path: Path) -> list[str]:
    """One section: per partition a table of accuracies and ratios to FedAvg without attack."""
    meta, cache = store["meta"], store["accuracy"]
    secs = sum(store["seconds"].values())
    lines = [
        f"### {meta['dataset']}",
        "",
        f"{meta['sites']} sites of which {meta['malicious']} malicious (sites chosen by the "
        f"simulation's seeded scenario), {meta['rounds']} rounds, local SGD lr {meta['lr']}, "
        f"{meta['local_epochs']} local epoch(s), batch 32, MLP with 64 hidden units, seed "
        f"{meta['seed']}. " + (NOTES[meta["dataset"]] + " " if meta["dataset"] in NOTES else "")
        + f"Results cached in `benchmarks/results/{path.name}`"
        + (f"; grid wall time {secs / 60:.1f} min, one simulation at a time." if secs else ".")
        + " Commands:",
        "",
        *[f"    {c}" for c in store["commands"]],
        "",
    ]
    for part in sorted({k.split("|")[0] for k in cache}):
        ref = cache.get(key(part, "mean", "none"))
        lines += [f"#### {meta['dataset']}, partition {part}"
                  + (f" (FedAvg without attack: {ref:.3f})" if ref else ""), ""]
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
            name = f"**{agg}**" if agg == DEFAULT_ROBUST else agg
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst} |")
        if ref:
            best = []
            for att in ATTACKS[1:]:
                top, ratio = best_for(cache, part, att)
                if top:
                    best.append(f"{att}: {top} {ratio:.2f}")
            lines += ["", "Best ratio per attack: " + "; ".join(best) + "."]
        lines.append("")
    return lines


def best_for(cache: dict[str, float], part: str, attack: str) -> tuple[str | None, float]:
    """The aggregator with the highest accuracy under ``attack`` and its ratio to FedAvg."""
    ref = cache.get(key(part, "mean", "none"))
    accs = {a: cache[key(part, a, attack)] for a in AGGREGATORS if key(part, a, attack) in cache}
    if not ref or not accs:
        return None, 0.0
    top = max(accs, key=accs.__getitem__)
    return top, accs[top] / ref


def targets(stores: dict[str, dict[str, Any]]) -> list[str]:
    """Per dataset and partition: the attack whose best aggregator keeps the least (target
    1: >= 0.9 for every attack) and the default robust configuration's worst attack
    (target 2: >= 0.8 under every attack). A missing cell counts as not met."""
    lines = [
        "### Targets",
        "",
        f"Target 1: for each attack at least one aggregator keeps >= {RATIO_ANY} of FedAvg's "
        f"no-attack accuracy. Target 2: the default robust configuration `{DEFAULT_ROBUST}` "
        f"keeps >= {RATIO_DEFAULT} of it under every attack. Each row gives the weakest case.",
        "",
        "| dataset | partition | target 1: min over attacks of the best ratio | met | "
        f"target 2: worst ratio of `{DEFAULT_ROBUST}` | met |",
        "|---|---|---|---|---|---|",
    ]
    all_met = True
    for dataset in REPORTED:
        if dataset not in stores:
            lines.append(f"| {dataset} | all | no results | NOT MET | no results | NOT MET |")
            all_met = False
            continue
        cache = stores[dataset]["accuracy"]
        for part in PARTITIONS:
            complete = all(key(part, a, t) in cache for a in AGGREGATORS for t in ATTACKS)
            best = {att: best_for(cache, part, att) for att in ATTACKS[1:]}
            att1 = min(best, key=lambda a: best[a][1])
            ok1 = complete and best[att1][1] >= RATIO_ANY
            ref = cache.get(key(part, "mean", "none"))
            dflt = {att: cache.get(key(part, DEFAULT_ROBUST, att), 0.0) / ref if ref else 0.0
                    for att in ATTACKS[1:]}
            att2 = min(dflt, key=dflt.__getitem__)
            ok2 = complete and dflt[att2] >= RATIO_DEFAULT
            all_met = all_met and ok1 and ok2
            lines.append(
                f"| {dataset} | {part} | {best[att1][1]:.3f} ({att1}, best: {best[att1][0]}) | "
                f"{'met' if ok1 else 'NOT MET'} | {dflt[att2]:.3f} ({att2}) | "
                f"{'met' if ok2 else 'NOT MET'} |"
                + ("" if complete else " (grid incomplete)")
            )
    lines += ["", "All targets met." if all_met else "Not all targets met (see rows marked NOT MET).", ""]
    return lines


def _legacy_note(cache: dict[str, float], path: Path) -> list[str]:
    """The superseded 20-round digits grid, summarised so the change of rounds stays visible."""
    worst = {}
    for part in PARTITIONS:
        best = {att: best_for(cache, part, att) for att in ATTACKS[1:]}
        att = min(best, key=lambda a: best[a][1])
        worst[part] = f"{part}: {best[att][1]:.3f} ({att}, best {best[att][0]})"
    ref = cache.get(key("dirichlet:0.5", "mean", "none"), 0.0)
    return [
        f"Earlier grid, digits at 20 rounds (`benchmarks/results/{path.name}`, same settings "
        f"otherwise): FedAvg without attack on dirichlet:0.5 was {ref:.3f} and still rising, "
        "and target 1's weakest case was " + "; ".join(worst.values()) + ". It is superseded "
        "by the 40-round grid above (the whole grid re-run, not single cells).",
        "",
    ]


def render() -> str:
    lines = [
        "## Robustness (issue 4, point 6)",
        "",
        "Final test accuracy of every aggregator under every attack, in-process engine, "
        "default attack parameters, FedAvg server step (lr 1). Cell = final test accuracy; "
        "in brackets the ratio to FedAvg (`mean`) without attack on the same dataset and "
        f"partition. One aggregator spec per row for the whole table. Default robust "
        f"configuration (README, Strategies): **`--aggregator {DEFAULT_ROBUST}`** (root set: "
        "5% of the training split, at least 20 samples, drawn with the run's seed, disjoint "
        "from the test split; the server trains on it with the sites' lr and local epochs).",
        "",
    ]
    stores: dict[str, dict[str, Any]] = {}
    for dataset in REPORTED:
        path = cache_path(dataset, SETTINGS[dataset]["rounds"])
        if path.exists():
            stores[dataset] = load_store(path)
            lines += render_dataset(stores[dataset], path)
        legacy = cache_path(dataset, 20)
        if dataset == "digits" and legacy != path and legacy.exists():
            lines += _legacy_note(load_store(legacy)["accuracy"], legacy)
    lines += targets(stores)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(SETTINGS))
    parser.add_argument("--partitions", nargs="*", default=PARTITIONS)
    parser.add_argument("--aggregators", nargs="+", default=AGGREGATORS)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--malicious", type=int, default=4)
    parser.add_argument("--rounds", type=int, help="default: per dataset, see SETTINGS")
    parser.add_argument("--lr", type=float, help="local SGD lr; default: per dataset")
    parser.add_argument("--local-epochs", type=int, help="default: per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="default: one file per (dataset, rounds)")
    parser.add_argument("--out", type=Path, default=RESULTS / "robustness.md")
    parser.add_argument("--rerun", action="store_true", help="ignore cached results")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="other cache files with the same settings merged in")
    args = parser.parse_args()
    for name in ("rounds", "lr", "local_epochs"):
        if getattr(args, name) is None:
            setattr(args, name, SETTINGS[args.dataset][name])
    cache_file = args.cache or cache_path(args.dataset, args.rounds)
    command = "python benchmarks/bench_robustness.py " + " ".join(sys.argv[1:])
    store = load_store(cache_file)
    meta = settings_meta(args)
    if store["accuracy"] and store["meta"] != meta:
        raise SystemExit(f"{cache_file} holds results for {store['meta']}, not {meta}; use --cache")
    store["meta"] = meta
    for other in args.merge:
        extra = load_store(other)
        if extra["meta"] != meta:
            raise SystemExit(f"--merge: {other} holds results for {extra['meta']}, not {meta}")
        store["accuracy"].update(extra["accuracy"])
        store["seconds"].update(extra["seconds"])
        store["commands"] += [c for c in extra["commands"] if c not in store["commands"]]

    def save() -> None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(store, indent=1, sort_keys=True))

    todo = [(p, a, t) for p in args.partitions for a in args.aggregators for t in args.attacks
            if args.rerun or key(p, a, t) not in store["accuracy"]]
    with tempfile.TemporaryDirectory() as out:
        for i, (part, agg, att) in enumerate(todo, 1):
            k = key(part, agg, att)
            t0 = time.perf_counter()
            store["accuracy"][k] = run_one(args, part, agg, att, out)
            store["seconds"][k] = round(time.perf_counter() - t0, 2)
            print(f"[{i}/{len(todo)}] {args.dataset} {k}: {store['accuracy'][k]:.3f} "
                  f"({store['seconds'][k]:.1f}s)", flush=True)
            save()  # after every run: an interrupted grid loses at most one simulation
    if todo and command not in store["commands"]:
        store["commands"].append(command)
    if store["accuracy"]:
        save()
    text = render()
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

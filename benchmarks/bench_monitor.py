"""Benchmark: does the monitor flag injected faults on the right site, and how often does it
flag clean sites? (issue 23, point 7)

Each scenario is a whole simulated run (`fedsilo.simulations.runner.run_federation`, the
in-process engine) of the default task (digits, 10 sites, Dirichlet(0.5) label skew) with
the monitor at its default thresholds. Ground truth comes from the simulation: the
malicious sites of an attack scenario (`fedsilo.simulations.scenario.malicious_sites`),
faulty from round 1. The flags are read back from the run's lineage chain (what
`fedsilo monitor` lists).

* **detection**: the fault is flagged on the right site within ``--within`` rounds of its
  start (default 3); a data-shift scenario's site is compared with its profile in the
  same seed's clean run (``--baseline``), flagged in round 1 when it is;
* **false flags**, per 100 clean site-rounds (sampled honest sites x rounds, over every
  scenario): every flag of a clean run, and every flag that accuses an honest site of a
  fault (the update, rejection, dropout and refusal codes) in an attacked run. The
  performance flags an attack causes at honest sites (the model got worse there, the
  gap widened) describe the model, not the site, and are counted apart ("effects");
  the strict rate, which counts them as false too, is given beside it.

Usage::

    python benchmarks/bench_monitor.py [--rounds 10] [--seeds 3] [--within 3] \\
        [--out benchmarks/results/monitor.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ATTACKED = ("free_ride", "scaling", "sign_flip", "gaussian", "ipm", "alie", "min_max",
            "label_flip", "covariate_shift", "label_shift")
DRIFTS = ("covariate_shift", "label_shift")
"""Data-shift scenarios: the faulty site's data is shifted in this run; its profile is
compared with the clean run of the same seed (``--baseline``, which runs first)."""


def run_scenario(out: Path, name: str, seed: int, rounds: int, attack: str | None,
                 task: str = "digits", baseline: Path | None = None) -> dict[str, Any]:
    """One run; its flags and ground truth."""
    from fedsilo import lineage
    from fedsilo.simulations.config import SimulationConfig
    from fedsilo.simulations.runner import run_federation
    from fedsilo.simulations.scenario import malicious_sites

    options: dict[str, Any] = {"task": task, "rounds": rounds, "seed": seed, "out": str(out),
                               "run_id": f"{task}-{name}-{seed}", "allow_overreach": True}
    if attack:
        options.update(attack=attack, malicious=1)
    if baseline is not None:
        options["monitor"] = {"baseline": str(baseline)}
    config = SimulationConfig.load(None, options)
    run = run_federation(config, engine="inprocess")
    chain = lineage.read_chain(run.run_dir / "lineage.sqlite")
    rounds_ = [e["body"] for e in chain if e["type"] == "round"]
    flags = [f for body in rounds_ for f in (body.get("extra") or {}).get("flags", [])]
    bad = set(malicious_sites(config.sites, config.malicious, config.seed)) if attack else set()
    clean_site_rounds = sum(len(set(b["sampled"]) - bad) for b in rounds_)
    return {"name": name, "seed": seed, "bad": bad, "flags": flags,
            "clean_site_rounds": clean_site_rounds, "run_dir": run.run_dir}


ACCUSING = frozenset({"update_norm_outlier", "update_opposes_aggregate", "free_rider",
                      "update_mimics_peers",
                      "repeated_rejections", "repeated_dropouts", "site_privacy_refusal",
                      "data_drift", "label_shift", "site_data_atypical"})
"""Codes that say a site did something wrong (the others describe the model)."""


def score(result: dict[str, Any], within: int) -> tuple[bool | None, int, int, Counter[str]]:
    """(detected within k rounds, or None for a clean run; false flags; effects; codes
    that hit the faulty site in time)."""
    bad, flags = result["bad"], result["flags"]
    hits = Counter(f["code"] for f in flags if f["site"] in bad and f["round"] <= within)
    others = [f for f in flags if f["site"] not in bad]
    if not bad:  # a clean run: every flag is false
        return None, len(others), 0, hits
    false = sum(1 for f in others if f["code"] in ACCUSING)
    return bool(hits), false, len(others) - false, hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--within", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", default=["clean", *ATTACKED],
                        help="which scenarios to run (default: all)")
    parser.add_argument("--task", default="digits", help="the bundled task (default digits)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/monitor.md"))
    args = parser.parse_args(argv)
    rows, totals = [], Counter()
    t0 = time.time()
    baselines: dict[int, Path] = {}  # seed -> its clean run (the drift scenarios' baseline)
    scenarios = sorted(args.scenarios, key=lambda n: n != "clean")  # clean first
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        for name in scenarios:
            attack = None if name == "clean" else name
            detected, n, hits = [], Counter(), Counter()
            for seed in range(args.seeds):
                if name in DRIFTS and seed not in baselines:
                    baselines[seed] = run_scenario(Path(tmp), "clean", seed, args.rounds, None,
                                                   args.task)["run_dir"]
                result = run_scenario(Path(tmp), name, seed, args.rounds, attack, args.task,
                                      baselines.get(seed) if name in DRIFTS else None)
                if name == "clean":
                    baselines[seed] = result["run_dir"]
                d, false, effects, h = score(result, args.within)
                detected.append(d)
                n.update(false=false, effects=effects, site_rounds=result["clean_site_rounds"])
                hits.update(h)
                print(f"{name} seed {seed}: detected={d} false={false} effects={effects} "
                      f"codes={dict(h)}", file=sys.stderr, flush=True)
            totals.update(n)
            rate = "-" if attack is None else f"{sum(map(bool, detected))}/{len(detected)}"
            rows.append((name, rate, ", ".join(f"{c} ({k})" for c, k in hits.most_common()) or "-",
                         n["false"], n["effects"], n["site_rounds"],
                         100.0 * n["false"] / max(n["site_rounds"], 1)))
    load = os.getloadavg()
    lines = [
        "Command: `python benchmarks/bench_monitor.py "
        f"--task {args.task} --rounds {args.rounds} --seeds {args.seeds} --within {args.within}"
        + (f" --scenarios {' '.join(args.scenarios)}`" if args.scenarios != ["clean", *ATTACKED]
           else "`"),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
        f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}; {time.time() - t0:.0f} s in all. Task "
        f"{args.task}, 10 sites, Dirichlet(0.5), 1 faulty site from round 1, default "
        f"monitor thresholds, in-process engine. The data-shift scenarios (covariate_shift: "
        f"the site's standardised features + 1; label_shift: the site keeps the lower half "
        f"of the classes) run with the same seed's clean run as `--baseline`.",
        "",
        f"| scenario | detected on the right site within {args.within} rounds | codes that hit "
        "| false flags | effects at honest sites | clean site-rounds | false flags per 100 "
        "clean site-rounds |",
        "|---|---:|---|---:|---:|---:|---:|",
        *(f"| {n} | {r} | {c} | {f} | {e} | {s} | {p:.2f} |" for n, r, c, f, e, s, p in rows),
        f"| **all** | | | {totals['false']} | {totals['effects']} | {totals['site_rounds']} | "
        f"{100.0 * totals['false'] / max(totals['site_rounds'], 1):.2f} (strict, effects "
        f"counted: {100.0 * (totals['false'] + totals['effects']) / max(totals['site_rounds'], 1):.2f}) |",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

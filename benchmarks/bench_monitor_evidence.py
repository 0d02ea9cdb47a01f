"""Probe: would evidence summed across rounds find the attacks the monitor misses? (issue 23, point 7)

The monitor flags ``update_opposes_aggregate`` from one round's leave-one-out cosines:
a site whose cosine is below its peers' median by ``norm_z`` robust standard deviations
(`fedsilo.governance.monitor`). Label flipping on mnist1d and wine, min_max everywhere and
sign flipping on mnist1d stay under that in any single round. This probe records every
round's cosines (the monitor's own `RoundView`, read as it is observed) of simulated runs
(in-process engine, 10 sites, Dirichlet(0.5), one attacker from round 1, 3 seeds) and
sums each site's per-round z over a window of 3 rounds (Stouffer: sum / sqrt(k)). It
prints the attacker's sum after rounds 1, 2 and 3 and the honest sites' largest sums
(every window, every round, clean and attacked runs) as quantiles: an attacker is
separable within 3 rounds only where its sum clears the honest tail.

    python benchmarks/bench_monitor_evidence.py [--rounds 6] [--tasks digits,mnist1d,wine,breast_cancer]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np

os.environ.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                  RAY_USAGE_STATS_ENABLED="0")

from fedsilo.governance import monitor  # noqa: E402
from fedsilo.simulations.config import SimulationConfig  # noqa: E402
from fedsilo.simulations.runner import run_federation  # noqa: E402
from fedsilo.simulations.scenario import malicious_sites  # noqa: E402

ATTACKS = ("clean", "label_flip", "min_max", "sign_flip")
WINDOW = 3


def cosine_z(cosines: list[float]) -> np.ndarray:
    """The monitor's one-round z of each cosine below its peers' median."""
    cos = np.asarray(cosines)
    center = np.median(cos)
    spread = max(1.4826 * float(np.median(np.abs(cos - center))), 0.05)
    return (center - cos) / spread


def run_views(task: str, attack: str, seed: int, rounds: int) -> tuple[list[Any], str | None]:
    """Every round's (site ids, cosines) of one run, and its attacker."""
    views: list[Any] = []
    observe = monitor.Monitor.observe

    def recording(self: monitor.Monitor, view: monitor.RoundView) -> Any:
        views.append((list(view.site_ids), [] if view.cosines is None else list(view.cosines)))
        return observe(self, view)

    monitor.Monitor.observe = recording  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            options: dict[str, Any] = {"task": task, "rounds": rounds, "seed": seed, "out": tmp,
                                       "run_id": "p", "allow_overreach": True}
            if attack != "clean":
                options.update(attack=attack, malicious=1)
            config = SimulationConfig.load(None, options)
            run_federation(config, engine="inprocess")
    finally:
        monitor.Monitor.observe = observe  # type: ignore[method-assign]
    bad = malicious_sites(config.sites, 1, seed)[0] if attack != "clean" else None
    return views, bad


def stouffer(history: list[float]) -> list[float]:
    """Each round's sum of the last `WINDOW` z over sqrt(their number)."""
    h = np.asarray(history)
    return [float(h[max(0, i - WINDOW + 1):i + 1].sum() / np.sqrt(min(i + 1, WINDOW)))
            for i in range(len(h))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tasks", default="digits,mnist1d,wine,breast_cancer")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; window {WINDOW} rounds\n")
    print("| task | honest sums: median / 90% / 99% / max | label_flip | min_max | sign_flip |")
    print("|---|---|---|---|---|")
    for task in args.tasks.split(","):
        honest: list[float] = []
        attacked: dict[str, list[str]] = {a: [] for a in ATTACKS[1:]}
        for attack in ATTACKS:
            for seed in range(3):
                views, bad = run_views(task, attack, seed, args.rounds)
                per_site: dict[str, list[float]] = {}
                for sites, cosines in views:
                    for site, z in zip(sites, cosine_z(cosines), strict=True):
                        per_site.setdefault(site, []).append(float(z))
                for site, history in per_site.items():
                    sums = stouffer(history)
                    if site == bad:
                        attacked[attack].append("/".join(f"{s:.1f}" for s in sums[:3]))
                    else:
                        honest.append(max(sums))
        q = np.quantile(honest, [0.5, 0.9, 0.99, 1.0])
        print(f"| {task} | " + " / ".join(f"{v:.1f}" for v in q) + " | "
              + " | ".join("; ".join(attacked[a]) for a in ATTACKS[1:]) + " |")


if __name__ == "__main__":
    main()

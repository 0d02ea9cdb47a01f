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

``--reference root`` asks the other question: would a reference direction that honest
heterogeneity does not move separate them? Each round the server trains the global model
on a root set it holds (one local epoch, as FLTrust's server does; here 5% of the bundled
task's held-out split) and the probe prints each update's cosine to that direction: the
honest sites' lowest quantiles and the attacker's cosine in rounds 1, 2 and 3.

    python benchmarks/bench_monitor_evidence.py [--rounds 6] [--tasks digits,mnist1d,wine,breast_cancer]
    python benchmarks/bench_monitor_evidence.py --reference root --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np

os.environ.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                  RAY_USAGE_STATS_ENABLED="0")

from fedsilo.common.codec import ModelLayout  # noqa: E402
from fedsilo.governance import monitor  # noqa: E402
from fedsilo.server import monitoring  # noqa: E402
from fedsilo.server import round as server_round_module  # noqa: E402
from fedsilo.simulations.config import SimulationConfig  # noqa: E402
from fedsilo.simulations.runner import bundled_data, run_federation  # noqa: E402
from fedsilo.simulations.scenario import malicious_sites  # noqa: E402

ATTACKS = ("clean", "label_flip", "min_max", "sign_flip")
WINDOW = 3
ROOT_ATTACKS = ("clean", "label_flip", "min_max", "sign_flip", "alie")


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
            config = _config(task, attack, seed, rounds, tmp)
            run_federation(config, engine="inprocess")
    finally:
        monitor.Monitor.observe = observe  # type: ignore[method-assign]
    bad = malicious_sites(config.sites, 1, seed)[0] if attack != "clean" else None
    return views, bad


def _config(task: str, attack: str, seed: int, rounds: int, out: str) -> SimulationConfig:
    options: dict[str, Any] = {"task": task, "rounds": rounds, "seed": seed, "out": out,
                               "run_id": "p", "allow_overreach": True}
    if attack != "clean":
        options.update(attack=attack, malicious=1)
    return SimulationConfig.load(None, options)


def root_cosines(task: str, attack: str, seed: int, rounds: int
                 ) -> tuple[list[tuple[list[str], np.ndarray]], str | None]:
    """Every round's (site ids, each update's cosine to the root set's update), and the attacker."""
    from fedsilo.tasks.torch_trainer import TorchTrainer

    rows: list[tuple[list[str], np.ndarray]] = []
    sent: dict[str, Any] = {}
    configure, geometry = server_round_module.configure, monitoring.update_geometry

    def capture(server: Any, number: int) -> Any:  # the global model this round trains
        sent.update(weights=server.parts.weights(server.model), round=number)
        return configure(server, number)

    def with_root(batch: Any, update: Any) -> Any:
        weights = sent["weights"]
        layout = ModelLayout.from_arrays(weights)
        fit = trainer.fit(weights, {"server_round": sent["round"], "lr": config.lr,
                                    "local_epochs": config.local_epochs})
        root = layout.flatten(fit.weights) - layout.flatten(weights)
        u = np.asarray(batch.updates, dtype=np.float64)
        scale = np.linalg.norm(u, axis=1) * np.linalg.norm(root)
        rows.append((list(batch.site_ids), u @ root / np.maximum(scale, 1e-12)))
        return geometry(batch, update)

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(task, attack, seed, rounds, tmp)
        data = bundled_data(config)
        assert data is not None, "--reference root needs a bundled task"
        rng = np.random.default_rng([seed, 0x2007])
        idx = rng.choice(len(data.y_test), size=max(20, len(data.y_train) // 20), replace=False)
        trainer = TorchTrainer(data.x_test[idx], data.y_test[idx], data.num_classes, seed=seed)
        server_round_module.configure, monitoring.update_geometry = capture, with_root  # type: ignore[assignment]
        try:
            run_federation(config, engine="inprocess")
        finally:
            server_round_module.configure, monitoring.update_geometry = configure, geometry
    return rows, (malicious_sites(config.sites, 1, seed)[0] if attack != "clean" else None)


def root_table(tasks: list[str], rounds: int) -> None:
    """Honest cosines to the root direction (lowest quantiles) beside each attacker's."""
    print("| task | honest: min / 1% / 5% / median | " + " | ".join(ROOT_ATTACKS[1:]) + " |")
    print("|---|---|" + "---|" * (len(ROOT_ATTACKS) - 1))
    for task in tasks:
        honest: list[float] = []
        attacked: dict[str, list[str]] = {a: [] for a in ROOT_ATTACKS[1:]}
        for attack in ROOT_ATTACKS:
            for seed in range(3):
                rows, bad = root_cosines(task, attack, seed, rounds)
                mine = [float(c) for sites, cos in rows for s, c in zip(sites, cos, strict=True) if s == bad]
                honest += [float(c) for sites, cos in rows for s, c in zip(sites, cos, strict=True)
                           if s != bad]
                if bad is not None:
                    attacked[attack].append("/".join(f"{c:+.2f}" for c in mine[:3]))
        q = np.quantile(honest, [0.0, 0.01, 0.05, 0.5])
        print(f"| {task} | " + " / ".join(f"{v:+.2f}" for v in q) + " | "
              + " | ".join("; ".join(attacked[a]) for a in ROOT_ATTACKS[1:]) + " |", flush=True)


def stouffer(history: list[float]) -> list[float]:
    """Each round's sum of the last `WINDOW` z over sqrt(their number)."""
    h = np.asarray(history)
    return [float(h[max(0, i - WINDOW + 1):i + 1].sum() / np.sqrt(min(i + 1, WINDOW)))
            for i in range(len(h))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tasks", default="digits,mnist1d,wine,breast_cancer")
    parser.add_argument("--reference", choices=("loo", "root"), default="loo",
                        help="loo: the monitor's leave-one-out cosine, summed over rounds; "
                             "root: each update's cosine to a server root set's update")
    args = parser.parse_args()
    if args.reference == "root":
        print(f"load average {os.getloadavg()[0]:.2f}; cosine to the root update\n")
        root_table(args.tasks.split(","), args.rounds)
        return
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

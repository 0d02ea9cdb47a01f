"""Quality benchmark: the same MLP trained centrally and federated (fedsilo simulate).

For each dataset (digits, breast_cancer, wine) and partition (iid, dirichlet:0.5,
dirichlet:0.1) with 10 sites, reports central test accuracy, federated test accuracy
after ROUNDS rounds, their ratio, and the first round at which the federated model
reaches 95% of the central accuracy. Central training sees the same number of passes
over the data as the federation (ROUNDS epochs, same batch size and learning rate).

    python benchmarks/bench_quality.py [--rounds 40] [--out benchmarks/results/quality.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.datasets import load_dataset
from fedsilo.simulations.models import evaluate_arrays, get_weights, make_mlp
from fedsilo.simulations.runner import run_federation
from fedsilo.simulations.trainer import TorchTrainer

DATASETS = ("digits", "breast_cancer", "wine")
PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1")


def central_accuracy(dataset: str, epochs: int, lr: float, seed: int) -> float:
    data = load_dataset(dataset, seed=seed)
    model = make_mlp(data.num_features, data.num_classes, seed=seed)
    trainer = TorchTrainer(data.x_train, data.y_train, data.num_classes, seed=seed)
    weights = get_weights(model)
    for epoch in range(1, epochs + 1):
        weights = trainer.fit(weights, {"server_round": epoch, "lr": lr, "local_epochs": 1}).weights
    from fedsilo.simulations.models import set_weights

    set_weights(model, weights)
    return evaluate_arrays(model, data.x_test, data.y_test)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", default="benchmarks/results/quality.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in DATASETS:
            central = central_accuracy(dataset, args.rounds, args.lr, args.seed)
            for part in PARTITIONS:
                t0 = time.perf_counter()
                cfg = SimulationConfig.load(None, {
                    "dataset": dataset, "partition": part, "sites": 10, "rounds": args.rounds,
                    "seed": args.seed, "lr": args.lr, "out": tmp, "run_id": f"{dataset}-{part}",
                })
                run = run_federation(cfg)
                accs = np.array([r.test_accuracy for r in run.rounds])
                fed = float(accs[-1])
                reach = np.flatnonzero(accs >= 0.95 * central)
                rows.append((dataset, part, central, fed, fed / central,
                             int(reach[0]) + 1 if reach.size else None, time.perf_counter() - t0))
                print(f"{dataset:14s} {part:14s} central {central:.4f} fed {fed:.4f} "
                      f"ratio {fed / central:.3f}", file=sys.stderr)
    lines = [
        "## Quality: central vs federated (10 sites)",
        "",
        f"Command: `python benchmarks/bench_quality.py --rounds {args.rounds} --seed {args.seed}` "
        f"(MLP 64 hidden, SGD lr {args.lr}, batch 32; federated: FedAvg, 1 local epoch, "
        f"{args.rounds} rounds, all sites every round; central: {args.rounds} epochs).",
        "",
        "| dataset | partition | central acc | federated acc | ratio | rounds to 95% of central | target ratio >= 0.97 |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, part, central, fed, ratio, reach, _secs in rows:
        lines.append(f"| {dataset} | {part} | {central:.4f} | {fed:.4f} | {ratio:.3f} | "
                     f"{reach if reach is not None else 'not reached'} | {'met' if ratio >= 0.97 else 'MISSED'} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

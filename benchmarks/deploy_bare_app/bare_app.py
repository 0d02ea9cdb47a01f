"""Bare Flower app for the deployment latency benchmark (``benchmarks/bench_deploy_latency.py``).

Flower's own `FedAvg` on the server, the plain ClientApp of ``benchmarks/flower_baseline``
(same MLP, data, partitions and local training code as fedsilo), central evaluation each
round like fedsilo. Needs ``benchmarks/`` on PYTHONPATH (the benchmark sets it for the
SuperLink and SuperNodes). Writes the per-round timestamps to the run config's
``times-file``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flower_baseline import _array, make_apps
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsilo.server.config import RunConfig

CONFIG = RunConfig(task="digits", sites=3, rounds=3, task_options={"partition": "iid"}, seed=0)
"""Must match the fedsilo run of the benchmark (dataset, sites, partition, seed)."""

client_app = make_apps(CONFIG, [])[1]
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg for ``rounds`` rounds; a timestamp after each round's central evaluation."""
    from fedsilo.simulations.datasets import load_dataset
    from fedsilo.simulations.models import evaluate_arrays, get_weights, make_mlp, set_weights

    data = load_dataset(CONFIG.dataset, seed=CONFIG.seed)
    model = make_mlp(data.num_features, data.num_classes, hidden=CONFIG.hidden, seed=CONFIG.seed)
    initial = ArrayRecord({k: _array(v) for k, v in get_weights(model).items()})
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=CONFIG.sites,
                      min_available_nodes=CONFIG.sites)
    stamps: list[tuple[int, float, float]] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(model, {k: v.numpy() for k, v in arrays.items()})
        loss, acc = evaluate_arrays(model, data.x_test, data.y_test)
        stamps.append((server_round, time.time(), acc))
        return MetricRecord({"loss": loss, "accuracy": acc})

    strategy.start(grid, initial, num_rounds=int(context.run_config["rounds"]), evaluate_fn=evaluate)
    out = str(context.run_config.get("times-file", ""))
    if out:
        Path(out).write_text(json.dumps([{"round": r, "time": t, "accuracy": a} for r, t, a in stamps]))

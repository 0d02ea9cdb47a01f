"""A bare Flower app (Flower's own FedAvg) with fedsilo's model, data and partitions.

The reference for the overhead benchmark: same MLP, same sites and partitions, same
local training code, but Flower's `flwr.serverapp.strategy.FedAvg` on the server and a
plain ClientApp that exchanges per-layer ArrayRecords.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsilo.server.app import tune_grid
from fedsilo.server.config import RunConfig
from fedsilo.simulations.datasets import load_dataset
from fedsilo.simulations.models import evaluate_arrays, get_weights, make_mlp, set_weights
from fedsilo.simulations.partition import PartitionSpec, partition
from fedsilo.simulations.trainer import TorchTrainer


def make_apps(config: RunConfig, round_times: list[float]) -> tuple[ServerApp, ClientApp]:
    """Flower ServerApp/ClientApp for ``config``; ``round_times`` gets a timestamp per round."""
    client_app = ClientApp()
    trainers: dict[int, TorchTrainer] = {}

    def trainer_for(pid: int) -> TorchTrainer:
        if pid not in trainers:
            data = load_dataset(config.dataset, seed=config.seed)
            parts = partition(data.y_train, config.sites, PartitionSpec.parse(config.partition), config.seed)
            trainers[pid] = TorchTrainer(data.x_train[parts[pid]], data.y_train[parts[pid]],
                                         data.num_classes, seed=config.seed * 100_003 + pid,
                                         batch_size=config.batch_size)
        return trainers[pid]

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        trainer = trainer_for(int(context.node_config["partition-id"]))
        arrays = msg.content["arrays"]
        weights = {k: v.numpy() for k, v in arrays.items()}
        fit = trainer.fit(weights, {"server_round": int(msg.content["config"]["server-round"]),
                                    "lr": config.lr, "local_epochs": config.local_epochs})
        reply = RecordDict({
            "arrays": ArrayRecord({k: _array(v) for k, v in fit.weights.items()}),
            "metrics": MetricRecord({"num-examples": fit.num_examples, **fit.metrics}),
        })
        return Message(reply, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        tune_grid(grid)  # same engine settings as fedsilo's ServerApp: a fair comparison
        data = load_dataset(config.dataset, seed=config.seed)
        model = make_mlp(data.num_features, data.num_classes, hidden=config.hidden, seed=config.seed)
        initial = ArrayRecord({k: _array(v) for k, v in get_weights(model).items()})
        strategy = FedAvg(fraction_train=config.fraction, fraction_evaluate=0.0,
                          min_train_nodes=1, min_available_nodes=config.sites)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            set_weights(model, {k: v.numpy() for k, v in arrays.items()})
            loss, acc = evaluate_arrays(model, data.x_test, data.y_test)
            if server_round > 0:
                round_times.append(time.perf_counter())
            return MetricRecord({"loss": loss, "accuracy": acc})

        strategy.start(grid, initial, num_rounds=config.rounds, evaluate_fn=evaluate)

    return server_app, client_app


def _array(value: np.ndarray) -> object:
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def run_flower_baseline(config: RunConfig) -> list[float]:
    """Run the bare Flower app on the simulation engine; return per-round timestamps."""
    from fedsilo.simulations.engine import run_on_simulation_engine

    times: list[float] = []
    server_app, client_app = make_apps(config, times)
    run_on_simulation_engine(server_app, client_app, config.sites)
    return times


Timer = Callable[[], float]

"""A bare Flower app (Flower's own FedAvg) with fedsilo's model, data and partitions.

The reference for the overhead benchmarks: same MLP, same sites and partitions, same
local training code, but Flower's `flwr.serverapp.strategy.FedAvg` on the server and a
plain ClientApp that exchanges per-layer ArrayRecords. With ``evaluate_sites`` each
sampled site also scores the new model on its own held-out rows (Flower's federated
evaluation), as ``fedsilo simulate``'s default does.

Run as a script it is one process, as a user would run it, printing one line per round
to stderr as the round ends (``round 3/20  [12.41s]``, seconds since the process
started its run), the same shape as ``fedsilo simulate``'s progress lines when stderr is
not a terminal; `bench_overhead.py` times those lines and the process's exit::

    python benchmarks/flower_baseline.py [--sites 10] [--rounds 20] [--hidden 64]
        [--partition dirichlet:0.5] [--fraction 1.0] [--seed 0] [--evaluate-sites]
"""

from __future__ import annotations

import argparse
import sys
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


def make_apps(config: RunConfig, round_times: list[float], *, evaluate_sites: bool = False,
              on_round: Callable[[int], None] | None = None) -> tuple[ServerApp, ClientApp]:
    """Flower ServerApp/ClientApp for ``config``; ``round_times`` gets a timestamp per round.

    ``evaluate_sites``: every sampled site also scores each round's model on its own
    held-out test rows (one evaluate message more per site and round). ``on_round``:
    called with the round number as each round ends (after the central evaluation).
    """
    client_app = ClientApp()
    trainers: dict[int, TorchTrainer] = {}
    held_out: dict[int, tuple[np.ndarray, np.ndarray, object]] = {}  # x, y, model

    def trainer_for(pid: int) -> TorchTrainer:
        if pid not in trainers:
            data = load_dataset(config.dataset, seed=config.seed)
            parts = partition(data.y_train, config.sites, PartitionSpec.parse(_partition(config)), config.seed)
            trainers[pid] = TorchTrainer(data.x_train[parts[pid]], data.y_train[parts[pid]],
                                         data.num_classes, seed=config.seed * 100_003 + pid,
                                         batch_size=config.batch_size)
            if evaluate_sites:
                from fedsilo.tasks.partition import held_out_split

                rows = held_out_split([data.y_train[p] for p in parts], data.y_test,
                                      config.seed)[pid]
                held_out[pid] = (data.x_test[rows], data.y_test[rows],
                                 make_mlp(data.num_features, data.num_classes,
                                          hidden=config.hidden, seed=config.seed))
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

    @client_app.evaluate()
    def evaluate_site(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        trainer_for(pid)
        x, y, model = held_out[pid]
        set_weights(model, {k: v.numpy() for k, v in msg.content["arrays"].items()})
        loss, acc = evaluate_arrays(model, x, y)
        reply = RecordDict({"metrics": MetricRecord({"num-examples": len(y), "loss": loss,
                                                     "accuracy": acc})})
        return Message(reply, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        tune_grid(grid)  # same engine settings as fedsilo's ServerApp: a fair comparison
        data = load_dataset(config.dataset, seed=config.seed)
        model = make_mlp(data.num_features, data.num_classes, hidden=config.hidden, seed=config.seed)
        initial = ArrayRecord({k: _array(v) for k, v in get_weights(model).items()})
        strategy = FedAvg(fraction_train=config.fraction,
                          fraction_evaluate=config.fraction if evaluate_sites else 0.0,
                          min_train_nodes=1, min_evaluate_nodes=1,
                          min_available_nodes=config.sites)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            set_weights(model, {k: v.numpy() for k, v in arrays.items()})
            loss, acc = evaluate_arrays(model, data.x_test, data.y_test)
            if server_round > 0:
                round_times.append(time.perf_counter())
                if on_round is not None and not evaluate_sites:
                    on_round(server_round)
            return MetricRecord({"loss": loss, "accuracy": acc})

        # Flower's strategy runs the central evaluation before the federated one: with the
        # sites' evaluation the round ends when its (federated) evaluation has been aggregated
        if evaluate_sites and on_round is not None:
            original = strategy.aggregate_evaluate

            def aggregate_evaluate(server_round: int, replies: object) -> object:
                out = original(server_round, replies)
                on_round(server_round)
                return out

            strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]
        strategy.start(grid, initial, num_rounds=config.rounds, evaluate_fn=evaluate)

    return server_app, client_app


def _partition(config: RunConfig) -> str:
    """The run's split: a `SimulationConfig`'s field, else the task option, else the default."""
    value = getattr(config, "partition", None) or (config.task_options or {}).get("partition")
    return str(value or "dirichlet:0.5")


def _array(value: np.ndarray) -> object:
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def run_flower_baseline(config: RunConfig, *, evaluate_sites: bool = False,
                        on_round: Callable[[int], None] | None = None) -> list[float]:
    """Run the bare Flower app on the simulation engine; return per-round timestamps
    (``time.perf_counter``). Parameters as for `make_apps`."""
    from fedsilo.simulations.engine import run_on_simulation_engine

    times: list[float] = []
    server_app, client_app = make_apps(config, times, evaluate_sites=evaluate_sites,
                                       on_round=on_round)
    run_on_simulation_engine(server_app, client_app, config.sites)
    return times


Timer = Callable[[], float]


def main(argv: list[str] | None = None) -> int:
    """One bare Flower federation, one line per round on stderr (see the module docstring)."""
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate-sites", action="store_true",
                        help="each sampled site also scores the model (fedsilo's default)")
    args = parser.parse_args(argv)
    from fedsilo.simulations.config import SimulationConfig

    config = SimulationConfig.load(None, {"sites": args.sites, "rounds": args.rounds,
                                   "hidden": args.hidden, "partition": args.partition,
                                   "fraction": args.fraction, "seed": args.seed})

    def line(server_round: int) -> None:
        print(f"round {server_round}/{config.rounds}  [{time.monotonic() - started:.2f}s]",
              file=sys.stderr, flush=True)

    run_flower_baseline(config, evaluate_sites=args.evaluate_sites, on_round=line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bundled datasets (digits, breast_cancer, wine, mnist1d) as built-in Tasks.

Each is a classification task on a bundled data set with a two-layer MLP
(`fedsilo.tasks.models.make_mlp`). The data's held-out split (stratified 20 %, seeded)
is the server's central validation set; the sites hold rows of the training split.
Which rows a site holds is its `SiteData.options["indices"]` (a simulation computes them
from its partition); without ``indices`` a site holds the whole training split.

Task options (``[task_options]``): ``hidden`` (hidden units, default 64), ``seed``
(initialisation and data split seed, default 0) and ``partition`` (how the demo data is
split over simulated sites and a deployment's ``partition-id`` nodes: ``iid``,
``dirichlet:ALPHA`` or ``shards:K``, default `DEFAULT_PARTITION`; read by
`fedsilo.tasks.partition.bundled_site_data`, ``fedsilo simulate --partition`` sets it). A
run passes its own ``hidden`` and ``seed`` unless the table sets them. The demo split is
a property of the bundled task's demo data, not of a server: a deployment's run config
has no top-level ``partition``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedsilo.tasks.base import SiteData, Task, Weights
from fedsilo.tasks.datasets import DATASETS, Dataset, load_dataset
from fedsilo.tasks.trainer import Trainer

OPTIONS = ("hidden", "seed", "partition")

# The demo split of a bundled dataset over its sites when ``[task_options]`` names none.
DEFAULT_PARTITION = "dirichlet:0.5"

# Local shuffling seed of a site: the run seed and the site's partition id, as before
# the Task interface existed (same models, same digests).
SITE_SEED_STRIDE = 100_003


class BundledTask(Task):
    """Classification of a bundled dataset with an MLP (see the module docstring)."""

    frozen_layers: tuple[str, ...] = ()

    def __init__(self, dataset: str, options: Mapping[str, Any] | None = None) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown bundled dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"task {dataset}: unknown task_options {unknown}; accepted: {list(OPTIONS)}")
        self.name = dataset
        self.hidden = _int_option(dataset, options, "hidden", 64)
        self.seed = _int_option(dataset, options, "seed", 0)
        self.partition = demo_partition(options, dataset)
        self._weights: Weights | None = None

    @property
    def data(self) -> Dataset:
        return load_dataset(self.name, seed=self.seed)

    def initial_weights(self) -> Weights:
        from fedsilo.tasks.models import get_weights, make_mlp

        if self._weights is None:
            data = self.data
            model = make_mlp(data.num_features, data.num_classes, hidden=self.hidden, seed=self.seed)
            self._weights = get_weights(model)
        return {k: v.copy() for k, v in self._weights.items()}

    def schema(self) -> dict[str, Any]:
        data = self.data
        return {"dataset": self.name, "features": data.num_features,
                "classes": data.num_classes, "test_split": "stratified 20%", "seed": self.seed}

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy")

    def build_trainer(self, data: SiteData,
                      statistics: Mapping[str, np.ndarray] | None = None) -> Trainer:
        from fedsilo import lineage
        from fedsilo.tasks.torch_trainer import TorchTrainer

        ds = self.data
        opts = data.options
        x, y = self._site_rows(ds, data)
        preprocessing: dict[str, Any] = {
            "source": f"sklearn.datasets.load_{ds.name}",
            "test_split": "stratified 20%, seed",
            "standardise": "train-split mean/std",
            **dict(opts.get("provenance") or {}),
        }
        fingerprint = lineage.data_fingerprint({"x": x, "y": y}, preprocessing=preprocessing)
        pid = int(opts.get("partition_id", 0))
        # the site's held-out split: its share of the central test rows (demo and simulated
        # sites get it from `fedsilo.tasks.partition.held_out_split`); without it, evaluate
        # scores its rows
        held = opts.get("held_out_indices")
        held_idx = None if held is None else np.asarray(held, dtype=np.int64)
        return TorchTrainer(x, y, ds.num_classes, seed=int(data.seed) * SITE_SEED_STRIDE + pid,
                            batch_size=int(opts.get("batch_size") or 32), fingerprint=fingerprint,
                            eval_x=None if held_idx is None else ds.x_test[held_idx],
                            eval_y=None if held_idx is None else ds.y_test[held_idx])

    def data_profile(self, data: SiteData) -> dict[str, np.ndarray]:
        """Histograms of the site's standardised features on `Z_EDGES` and its label counts."""
        from fedsilo.tasks.profile import histogram_profile

        ds = self.data
        x, y = self._site_rows(ds, data)
        return histogram_profile(x, y, ds.num_classes)

    @staticmethod
    def _site_rows(ds: Dataset, data: SiteData) -> tuple[np.ndarray, np.ndarray]:
        """The rows the site trains on: its ``indices`` of the training split, with a
        simulated data attack's ``row_filter``, ``feature_transform`` and
        ``label_transform`` applied (in that order)."""
        opts = data.options
        idx = np.asarray(opts["indices"], dtype=np.int64) if "indices" in opts else \
            np.arange(len(ds.y_train))
        x, y = ds.x_train[idx], ds.y_train[idx]
        if opts.get("row_filter") is not None:  # simulated label shift: fewer classes
            keep = opts["row_filter"](y, ds.num_classes)
            x, y = x[keep], y[keep]
        if opts.get("feature_transform") is not None:  # simulated covariate shift
            x = opts["feature_transform"](x)
        if opts.get("label_transform") is not None:  # simulated label flipping
            y = opts["label_transform"](y, ds.num_classes)
        return x, y

    def central_evaluator(self) -> Callable[[Weights], dict[str, float]]:
        from fedsilo.tasks.models import evaluate_arrays, make_mlp, set_weights

        ds = self.data
        model = make_mlp(ds.num_features, ds.num_classes, hidden=self.hidden, seed=self.seed)

        def evaluate(weights: Weights) -> dict[str, float]:
            set_weights(model, weights)
            loss, acc = evaluate_arrays(model, ds.x_test, ds.y_test)
            return {"loss": loss, "accuracy": acc}

        return evaluate


def _int_option(task: str, options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "hidden" else 0):
        raise ValueError(f"task {task}: task_options.{name} must be an integer "
                         f"{'>= 1' if name == 'hidden' else '>= 0'}, got {value!r}")
    return value


def demo_partition(options: Mapping[str, Any], task: str = "bundled task") -> str:
    """The demo split named by a bundled task's ``options`` (``partition``, else
    `DEFAULT_PARTITION`), checked: `ValueError` naming ``task_options.partition``."""
    from fedsilo.tasks.partition import PartitionError, PartitionSpec

    value = options.get("partition", DEFAULT_PARTITION)
    if not isinstance(value, str):
        raise ValueError(f"task {task}: task_options.partition must be a string "
                         f"(iid, dirichlet:ALPHA, shards:K), got {value!r}")
    try:
        PartitionSpec.parse(value)
    except PartitionError as exc:
        raise ValueError(f"task {task}: task_options.partition: {exc}") from None
    return value


def bundled_task(name: str) -> Callable[[Mapping[str, Any]], Task]:
    """The factory the registry calls for built-in ``name`` (options -> Task)."""
    return lambda options: BundledTask(name, options)

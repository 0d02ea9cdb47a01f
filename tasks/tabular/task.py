"""`TabularTask`: the built-in ``tabular`` task, configured in TOML with no code.

The run config's ``[task_options]`` hold the shared schema and the model
(`fedsilo.tasks.tabular.schema`); each site's ``[data]`` table points at its own CSV or
Parquet file, maps its column names onto the schema and declares its held-out split
(`fedsilo.tasks.tabular.data`). Before round 1 the server sums every site's
`site_statistics` (counts, sums, sums of squares of the numeric features) and each
site standardises with the resulting federated means and standard deviations.

Besides the ``[data]`` keys, `SiteData.options` may hold ``seed`` (the site's seed,
read by the site runtime into `SiteData.seed`), ``batch_size`` (used unless
``task_options.batch_size`` is set or the kind is survival, which trains full-batch;
default 32), ``partition_id`` (local shuffling seed), ``provenance`` (simulation: how the
rows were chosen, for the data fingerprint) and ``label_transform`` (a simulated
label-flipping attack on the class codes).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsilo.tasks.base import SiteData, Task, Weights
from fedsilo.tasks.tabular.data import DataSource, SiteTable, load_site_table
from fedsilo.tasks.tabular.model import get_weights, make_model
from fedsilo.tasks.tabular.schema import TabularSchema
from fedsilo.tasks.tabular.stats import Standardisation, encode, scaled_target, site_statistics
from fedsilo.tasks.tabular.trainer import TabularTrainer

RUNTIME_KEYS = ("batch_size", "partition_id", "provenance", "label_transform", "seed")
SITE_SEED_STRIDE = 100_003


class TabularTask(Task):
    """Binary, multiclass, regression or survival learning on each site's own table."""

    name = "tabular"
    version = "1"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self.spec = TabularSchema.from_options(self.options)
        self._weights: Weights | None = None
        self._tables: dict[str, SiteTable] = {}

    def initial_weights(self) -> Weights:
        if self._weights is None:
            self._weights = get_weights(make_model(self.spec))
        return {k: v.copy() for k, v in self._weights.items()}

    def schema(self) -> dict[str, Any]:
        return self.spec.to_json()

    def metric_names(self) -> tuple[str, ...]:
        return self.spec.metric_names()

    def source(self, data: SiteData) -> DataSource:
        """The site's validated data source (its ``[data]`` table, runtime keys left out)."""
        table = {k: v for k, v in data.options.items() if k not in RUNTIME_KEYS}
        return DataSource.from_options(data.site_id, table, self.spec, base_dir=data.base_dir,
                                       seed=int(data.seed))

    def site_table(self, data: SiteData) -> SiteTable:
        """The site's rows, checked and split (read once per site and file version)."""
        source = self.source(data)
        key = json.dumps([source.site_id, str(source.path), source.columns, source.ignore,
                          source.test_fraction, source.split_seed, source.split_column,
                          source.rows, source.site_column, source.site_value], default=str)
        if key not in self._tables:
            self._tables[key] = load_site_table(self.spec, source)
        return self._tables[key]

    def site_statistics(self, data: SiteData) -> dict[str, np.ndarray]:
        return site_statistics(self.spec, self.site_table(data).train)

    def build_trainer(self, data: SiteData,
                      statistics: Mapping[str, np.ndarray] | None = None) -> TabularTrainer:
        """The site's trainer; without ``statistics`` (before the federation's sums exist)
        it standardises with its own training rows' statistics."""
        table = self.site_table(data)
        spec, opts = self.spec, data.options
        stats = site_statistics(spec, table.train) if statistics is None else statistics
        scale = Standardisation.from_statistics(spec, stats)
        y = scaled_target(spec, table.train, scale)
        transform = opts.get("label_transform")
        if transform is not None and spec.kind in ("binary", "multiclass"):
            y = np.asarray(transform(y, len(spec.classes)), dtype=np.int64)
        pid = opts.get("partition_id")
        local = int(pid) if pid is not None else zlib.crc32(data.site_id.encode())
        return TabularTrainer(
            spec, encode(spec, table.train, scale), y, table.train.event,
            eval_x=encode(spec, table.test, scale), eval_target=table.test.target,
            eval_event=table.test.event, scale=scale,
            seed=int(data.seed) * SITE_SEED_STRIDE + local,
            batch_size=self._batch_size(opts, len(y)),
            fingerprint=self._fingerprint(table, y, opts.get("provenance")),
        )

    def _batch_size(self, opts: Mapping[str, Any], rows: int) -> int:
        """``task_options.batch_size``; else, for survival, the site's every training row;
        else the runtime's batch size (simulation), else 32.

        Survival trains full-batch because a Cox partial likelihood is not a sum over rows:
        each event's term needs its whole risk set, and a mini-batch cuts the risk sets to
        the batch's rows (a different, noisier likelihood: on the benchmark's skewed split,
        0.61 instead of the exact stratified fit's 0.64 C-index at one seed). Full-batch,
        one local epoch is one gradient step on the site's partial likelihood, and a FedAvg
        round one gradient step on the sum over sites (the model stratified by site).
        """
        if self.spec.batch_size:
            return int(self.spec.batch_size)
        if self.spec.kind == "survival":
            return max(1, rows)
        return int(opts.get("batch_size") or 32)

    def _fingerprint(self, table: SiteTable, y: np.ndarray, provenance: Any) -> str:
        """Digest of the site's rows as read (before standardisation, which depends on the
        other sites) and of the declared preprocessing."""
        from fedsilo import lineage

        src, train, test = table.source, table.train, table.test
        arrays = {"numeric": train.numeric, "categorical": train.categorical, "target": y,
                  "rows": train.rows, "held_out_rows": test.rows}
        if train.event is not None:
            arrays["event"] = train.event
        preprocessing = {
            "task": self.name, "schema": self.spec.to_json(), "file": src.path.name,
            "columns": dict(src.columns), "ignore": list(src.ignore),
            "split": ({"column": src.split_column} if src.split_column else
                      {"test_fraction": src.test_fraction, "seed": src.split_seed}),
            "standardise": "federated mean/std", **dict(provenance or {}),
        }
        return lineage.data_fingerprint(arrays, preprocessing=preprocessing)

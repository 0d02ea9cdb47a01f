"""Simulations over a user's own files: ``task_options.data`` of the ``tabular`` task.

Three ways to turn the files into simulated sites:

* a directory: one site per ``.csv`` / ``.parquet`` / ``.pq`` file, the site id being
  the file's stem (``hospital-a.csv`` is site ``hospital-a``); ``--sites`` and
  ``--partition`` are taken from the directory;
* one file and ``--partition column:NAME``: the natural partition of cross-silo data,
  one site per distinct value of column NAME (the site id is the value, with characters
  other than letters, digits, ``_ . -`` replaced by ``-``); ``--sites`` is taken from
  the data;
* one file and a synthetic split (``iid``, ``dirichlet:ALPHA``, ``shards:K``) over
  ``--sites`` sites ``site-000``...: by class for binary and multiclass, by event for
  survival, by quintile of the target for regression.

Each site then reads only its own rows (`SiteData.options`: ``path`` and ``rows``, or
``site_column`` and ``site_value``) and holds out its own split (``test_fraction``,
seeded by the run's seed). The server reads the file only to find the sites.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsilo.tasks.base import SiteData
from fedsilo.tasks.bundled import DEFAULT_PARTITION
from fedsilo.tasks.partition import PartitionError, PartitionSpec, partition, site_id

if TYPE_CHECKING:
    from fedsilo.server.config import RunConfig

USER_DATA_TASKS = ("tabular",)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class UserSites:
    """The simulated sites of a user's data: ids and each one's ``[data]``-like options."""

    site_ids: tuple[str, ...]
    options: tuple[dict[str, Any], ...]
    how: str  # "directory", "column:NAME" or the synthetic partition


def uses_user_data(task: str, task_options: Mapping[str, Any]) -> bool:
    """Whether a run simulates over a user's files (a tabular task with ``data`` set)."""
    return task in USER_DATA_TASKS and bool(task_options.get("data"))


def resolve_config(config: RunConfig) -> RunConfig:
    """``config`` with ``task_options.data`` made absolute (sites may run in other working
    directories) and, for a directory or a column partition, ``sites`` set to the number
    of sites the data names. Raises `ConfigError` (``--task-options``/``--partition``) on
    a file or partition that cannot be used; a config without user data is returned as is."""
    if not uses_user_data(config.task, config.task_options):
        return config  # (before the imports: a bundled task's run loads no pandas)
    from fedsilo.server.config import ConfigError
    from fedsilo.tasks.tabular import SchemaError, TabularError, TabularSchema

    try:
        TabularSchema.from_options(config.task_options)
    except SchemaError as exc:  # names the option itself
        raise ConfigError(str(exc)) from None
    path = Path(str(config.task_options["data"])).expanduser().resolve()
    options = {**config.task_options, "data": str(path)}
    # the split of the file: a simulation field (`SimulationConfig.partition`); a
    # deployment's config (checked here by `fedsilo server run`) has none: the default
    split = str(getattr(config, "partition", DEFAULT_PARTITION))
    try:
        found = user_sites(json.dumps(options, sort_keys=True), split, config.sites, config.seed)
        check_sites(json.dumps(options, sort_keys=True), split, config.sites, config.seed)
    except PartitionError as exc:
        flag = "--sites" if "exceeds" in str(exc) else "--partition"
        raise ConfigError(f"{flag}: {exc}") from None
    except TabularError as exc:
        raise ConfigError(f"task_options.data: {exc}") from None
    # a deployment's config (`fedsilo server run` checks it here too) has no attackers
    if getattr(config, "attack", None) and (found.how == "directory" or found.how.startswith("column:")):
        raise ConfigError("--attack: simulated attacks pick sites site-000...; with sites named "
                          "by the data, use a synthetic --partition (iid, dirichlet, shards)")
    return type(config).from_dict({**config.to_dict(), "task_options": options,
                                   "sites": len(found.site_ids)})


def site_data(fed: Mapping[str, Any], pid: int) -> SiteData:
    """The `SiteData` of simulated site ``pid`` of a federation over user data."""
    options = json.loads(fed.get("task_options") or "{}")
    seed = int(fed["seed"])
    found = user_sites(json.dumps(options, sort_keys=True), str(fed["partition"]),
                       int(fed["sites"]), seed)
    data = {
        **found.options[pid], "partition_id": pid, "batch_size": int(fed.get("batch_size") or 32),
        "provenance": {"partition": found.how, "partition_seed": seed, "partition_id": pid},
    }
    sid = found.site_ids[pid]
    if sid in (fed.get("label_flip_sites") or "").split(","):
        from fedsilo.simulations.attacks import flip_labels

        data["label_transform"] = flip_labels
        data["provenance"]["label_flip"] = True
    return SiteData(site_id=sid, options=data, seed=seed)


@lru_cache(maxsize=16)
def check_sites(task_options_json: str, partition_text: str, sites: int, seed: int) -> None:
    """Read and check every site's rows as its site will (before any round, so that a bad
    file stops the run with one line naming the site, file and column, and exit code 2)."""
    from fedsilo.tasks.tabular import TabularTask

    task = TabularTask(json.loads(task_options_json))
    fed = {"task_options": task_options_json, "partition": partition_text, "sites": sites,
           "seed": seed}
    for pid in range(len(user_sites(task_options_json, partition_text, sites, seed).site_ids)):
        task.site_table(site_data(fed, pid))


@lru_cache(maxsize=16)
def user_sites(task_options_json: str, partition_text: str, sites: int, seed: int) -> UserSites:
    """The sites of ``task_options.data`` (cached: every simulated site of a process asks).
    `PartitionError` or `fedsilo.tasks.tabular.TabularError` when they cannot be made."""
    from fedsilo.tasks.tabular import DataError, TabularSchema

    options = json.loads(task_options_json)
    schema = TabularSchema.from_options(options)
    path = Path(str(options["data"]))
    spec = PartitionSpec.parse(partition_text)
    if path.is_dir():
        if spec.kind == "column":
            raise PartitionError(f"{spec}: {path} is a directory (one site per file); split one "
                                 "file by a column instead")
        return _directory(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if spec.kind == "column":
        return _by_column(path, spec.column)
    return _synthetic(path, schema, spec, sites, seed)


def _directory(path: Path) -> UserSites:
    from fedsilo.tasks.tabular import DataError
    from fedsilo.tasks.tabular.data import FORMATS

    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in FORMATS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{path}: no .csv, .parquet or .pq file (one per site)")
    ids = [_safe_id(p.stem, f"{path}: file {p.name!r}") for p in files]
    _refuse_duplicates(ids, [p.name for p in files], str(path))
    return UserSites(tuple(ids), tuple({"path": str(p)} for p in files), "directory")


def _by_column(path: Path, column: str) -> UserSites:
    from fedsilo.tasks.tabular import DataError
    from fedsilo.tasks.tabular.data import read_table
    from fedsilo.tasks.tabular.schema import canon

    frame = read_table(path)
    if column not in frame.columns:
        raise PartitionError(f"column:{column}: {path} has no column {column!r} (its columns: "
                             f"{', '.join(map(str, frame.columns))})")
    cells = frame[column].tolist()
    empty = [i + 1 for i, v in enumerate(cells) if v is None or str(v).strip() in ("", "nan")]
    if empty:
        raise DataError(f"{path}: column {column!r}: {len(empty)} empty cells (row "
                        f"{empty[0]}...); every row must name its site")
    values = sorted({canon(v) for v in cells})
    ids = [_safe_id(v, f"{path}: column {column!r}: value {v!r}") for v in values]
    _refuse_duplicates(ids, values, f"{path}: column {column!r}")
    options = tuple({"path": str(path), "site_column": column, "site_value": v} for v in values)
    return UserSites(tuple(ids), options, f"column:{column}")


def _synthetic(path: Path, schema: Any, spec: PartitionSpec, sites: int, seed: int) -> UserSites:
    from fedsilo.tasks.tabular.data import DataSource, read_columns

    source = DataSource(site_id="", path=path, columns={}, split_column=schema.split_column)
    cols = read_columns(schema, source)  # the whole file checked once, errors name the file
    if schema.kind == "survival":
        labels = np.asarray(cols.event, dtype=np.int64)
    elif schema.kind == "regression":
        edges = np.quantile(cols.target, [0.2, 0.4, 0.6, 0.8])
        labels = np.searchsorted(edges, cols.target, side="right")
    else:
        labels = cols.target
    parts = partition(labels, sites, spec, seed)
    rows = [(cols.rows[p] - 1).tolist() for p in parts]  # file row positions
    return UserSites(tuple(site_id(i) for i in range(sites)),
                     tuple({"path": str(path), "rows": r} for r in rows), str(spec))


def _safe_id(value: str, where: str) -> str:
    from fedsilo.tasks.tabular import DataError

    sid = _UNSAFE.sub("-", str(value)).strip("-.")[:64]
    if not sid:
        raise DataError(f"{where}: cannot make a site id of it (letters, digits, '_', '.', '-')")
    return sid


def _refuse_duplicates(ids: list[str], names: list[str], where: str) -> None:
    from fedsilo.tasks.tabular import DataError

    seen: dict[str, str] = {}
    for sid, name in zip(ids, names, strict=True):
        if sid in seen:
            raise DataError(f"{where}: {seen[sid]!r} and {name!r} both make site id {sid!r}")
        seen[sid] = name

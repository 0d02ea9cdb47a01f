"""A site's table: its CSV or Parquet file read, renamed onto the schema, checked and split.

A site's ``site.toml`` ``[data]`` table (`SiteData.options`)::

    [data]
    path = "visits.parquet"              # .csv, .parquet or .pq; relative to site.toml
    columns = {AGE_YRS = "age", Sex = "sex"}   # local name = schema name
    ignore = ["patient_id"]              # local columns that are not used
    test_fraction = 0.2                  # held-out split: a seeded fraction ...
    split_seed = 0
    # split_column = "split"             # ... or a column: train/test, 0/1 or false/true

Simulations add ``rows`` (the file's 0-based row positions of this site) or
``site_column`` and ``site_value`` (the rows whose column holds the site's id).

Every problem is a `DataError`: one line naming the site, the file, the column (by its
local name) and what was expected. Row numbers count data rows from 1 (the header
is not a row).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.tasks.tabular.convert import Columns, DataError, Namer, convert, is_empty, shown
from fedsilo.tasks.tabular.schema import TabularSchema, canon

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DATA_KEYS = ("path", "columns", "ignore", "test_fraction", "split_seed", "split_column", "rows",
             "site_column", "site_value")
_TEST, _TRAIN = {"1", "test"}, {"0", "train"}  # canon() spells true/false as 1/0


@dataclass(frozen=True)
class DataSource:
    """Where a site's rows come from and how they map onto the schema (see the module docstring)."""

    site_id: str
    path: Path
    columns: Mapping[str, str]
    ignore: tuple[str, ...] = ()
    test_fraction: float = 0.2
    split_seed: int = 0
    split_column: str | None = None
    rows: tuple[int, ...] | None = None
    site_column: str | None = None
    site_value: str | None = None

    @classmethod
    def from_options(cls, site_id: str, options: Mapping[str, Any], schema: TabularSchema, *,
                     base_dir: Path | None = None, seed: int = 0) -> DataSource:
        """Validate a ``[data]`` table; defaults from the schema (fraction, split column) and
        ``seed`` (split seed)."""
        where = f"site {site_id}: [data]"
        unknown = sorted(set(options) - set(DATA_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}; accepted: "
                            f"{', '.join(DATA_KEYS)}")
        raw_path = options.get("path", schema.data)
        if not isinstance(raw_path, str | Path) or not str(raw_path).strip():
            raise DataError(f"{where}: path is missing (the site's .csv or .parquet file)")
        path = Path(raw_path).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        columns = options.get("columns", {})
        if not isinstance(columns, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
            raise DataError(f"{where}: columns must be a table {{local_name = \"schema_name\"}}")
        ignore = options.get("ignore", [])
        if not isinstance(ignore, list | tuple) or not all(isinstance(c, str) for c in ignore):
            raise DataError(f"{where}: ignore must be a list of column names")
        fraction = options.get("test_fraction", schema.test_fraction)
        if (isinstance(fraction, bool) or not isinstance(fraction, int | float)
                or not 0 < fraction < 1):
            raise DataError(f"{where}: test_fraction must be a number between 0 and 1, got "
                            f"{fraction!r}")
        split_seed = options.get("split_seed", seed)
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise DataError(f"{where}: split_seed must be an integer, got {split_seed!r}")
        split_column = options.get("split_column", schema.split_column)
        if split_column is not None and (not isinstance(split_column, str) or not split_column):
            raise DataError(f"{where}: split_column must be a column name, got {split_column!r}")
        rows = options.get("rows")
        return cls(
            site_id=site_id, path=path, columns=dict(columns), ignore=tuple(ignore),
            test_fraction=float(fraction), split_seed=split_seed,
            split_column=split_column,
            rows=None if rows is None else tuple(int(r) for r in rows),
            site_column=options.get("site_column"),
            site_value=None if options.get("site_value") is None else str(options["site_value"]),
        )

    @property
    def where(self) -> str:
        return f"site {self.site_id}: {self.path}" if self.site_id else str(self.path)


@dataclass(frozen=True)
class SiteTable:
    """A site's training and held-out rows."""

    source: DataSource
    train: Columns
    test: Columns


def read_table(path: Path, where: str | None = None) -> pd.DataFrame:
    """The file as a DataFrame (CSV cells as strings; read once per file version; do not
    modify it). `DataError` for a missing, unreadable or empty file."""
    where = where or str(path)
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{where}: expected a .csv, .parquet or .pq file")
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read the file ({exc.strerror or exc})") from None
    # keyed by content: a file rewritten within the clock's resolution is read again
    digest = hashlib.sha256(content).hexdigest()
    frame = _read_cached(digest, fmt, where, content)
    if len(frame) == 0:
        raise DataError(f"{where}: empty file (a header and no rows)")
    return frame


_CACHE: dict[tuple[str, str, str], pd.DataFrame] = {}


def _read_cached(digest: str, fmt: str, where: str, content: bytes) -> pd.DataFrame:
    key = (digest, fmt, where)
    if key not in _CACHE:
        if len(_CACHE) >= 32:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _parse(content, fmt, where)
    return _CACHE[key]


def _parse(content: bytes, fmt: str, where: str) -> pd.DataFrame:
    try:
        if fmt == "csv":
            # every cell as text: types are checked per column with row numbers, never guessed
            frame = pd.read_csv(io.BytesIO(content), dtype=str, skipinitialspace=True)
        else:
            frame = pd.read_parquet(io.BytesIO(content))
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: empty file (no header, no rows)") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where}: not a readable {fmt} file ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True)


def read_columns(schema: TabularSchema, source: DataSource) -> Columns:
    """The site's rows of its file, renamed onto the schema and checked (no split)."""
    frame = _select_rows(read_table(source.path, source.where), source)
    if source.split_column is not None:
        frame = frame.drop(columns=[source.split_column], errors="ignore")
    frame, local = _map_columns(frame, source, schema)
    return convert(frame, schema, Namer(source.where, local))


def load_site_table(schema: TabularSchema, source: DataSource) -> SiteTable:
    """The site's rows, checked and split into training and held-out parts."""
    frame = _select_rows(read_table(source.path, source.where), source)
    is_test = None
    if source.split_column is not None:
        is_test = _split_flags(frame, source)
        frame = frame.drop(columns=[source.split_column])
    frame, local = _map_columns(frame, source, schema)
    cols = convert(frame, schema, Namer(source.where, local))
    if is_test is None:
        is_test = _random_split(cols, schema, source)
    train, test = cols.take(~is_test), cols.take(is_test)
    how = (f"split column {source.split_column!r}" if source.split_column
           else f"test_fraction {source.test_fraction}")
    for name, part in (("training", train), ("held-out", test)):
        if len(part) == 0:
            raise DataError(f"{source.where}: the {name} split is empty ({len(cols)} rows, {how})")
    return SiteTable(source, train, test)


def _select_rows(frame: pd.DataFrame, source: DataSource) -> pd.DataFrame:
    if source.rows is not None:
        bad = [r for r in source.rows if not 0 <= r < len(frame)]
        if bad:
            raise DataError(f"{source.where}: rows: position {bad[0]} is outside the file's "
                            f"{len(frame)} rows")
        frame = frame.iloc[list(source.rows)]
    if source.site_column is not None:
        if source.site_column not in frame.columns:
            raise DataError(f"{source.where}: no column {source.site_column!r} to split sites by")
        keys = frame[source.site_column].map(lambda v: "" if pd.isna(v) else canon(v))
        frame = frame[keys == source.site_value].drop(columns=[source.site_column])
    if len(frame) == 0:
        raise DataError(f"{source.where}: no rows for this site")
    return frame


def _split_flags(frame: pd.DataFrame, source: DataSource) -> np.ndarray:
    name = str(source.split_column)
    if name not in frame.columns:
        raise DataError(f"{source.where}: missing split column {name!r}")
    flags = np.zeros(len(frame), dtype=bool)
    for i, value in enumerate(frame[name].tolist()):
        key = "" if is_empty(value) else canon(value).lower()
        if key not in _TEST | _TRAIN:
            raise DataError(f"{source.where}: column {name!r}: expected train/test, 0/1 or "
                            f"false/true, got {shown(value)} in row {frame.index[i] + 1}")
        flags[i] = key in _TEST
    return flags


def _map_columns(frame: pd.DataFrame, source: DataSource,
                 schema: TabularSchema) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drop ``ignore``, rename local columns onto the schema; refuse missing or extra ones.
    Returns the frame in schema names and {schema name: local name}."""
    where, present, wanted = source.where, set(frame.columns), schema.columns
    for name in source.ignore:
        if name not in present:
            raise DataError(f"{where}: [data] ignore names {name!r}, which the file does not have")
    for local_name, shared in source.columns.items():
        if local_name not in present:
            raise DataError(f"{where}: [data] columns maps {local_name!r}, which the file does "
                            "not have")
        if shared not in wanted:
            raise DataError(f"{where}: [data] columns maps {local_name!r} onto {shared!r}, which "
                            f"is not a schema column (expected one of {', '.join(wanted)})")
    frame = frame.drop(columns=list(source.ignore)).rename(columns=dict(source.columns))
    names = list(frame.columns)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{where}: two columns map onto {dupes[0]!r} (rename one, or ignore it)")
    local = {shared: loc for loc, shared in source.columns.items()}
    missing = [c for c in wanted if c not in names]
    if missing:
        more = (f" (and {len(missing) - 1} more: {', '.join(missing[1:])})"
                if len(missing) > 1 else "")
        raise DataError(f"{where}: missing column {missing[0]!r}{more}; if the file names it "
                        f"differently, map it: [data] columns = {{local_name = \"{missing[0]}\"}}")
    extra = [c for c in names if c not in wanted]
    if extra:
        raise DataError(f"{where}: extra column {extra[0]!r} (not in the schema); map it onto a "
                        f"schema column or drop it: [data] ignore = [\"{extra[0]}\"]")
    return frame[list(wanted)], local


def _random_split(cols: Columns, schema: TabularSchema, source: DataSource) -> np.ndarray:
    """Seeded held-out mask; stratified by class (or by event) where every stratum allows it."""
    from sklearn.model_selection import train_test_split

    n = len(cols)
    strata = cols.event if schema.kind == "survival" else (
        None if schema.kind == "regression" else cols.target)
    index = np.arange(n)
    try:
        _, test = train_test_split(index, test_size=source.test_fraction,
                                   random_state=source.split_seed, stratify=strata)
    except ValueError:  # a class too small to stratify (or a tiny site): a plain seeded split
        if n < 2:
            raise DataError(f"{source.where}: {n} row; a site needs at least 2 (training and "
                            "held-out)") from None
        _, test = train_test_split(index, test_size=source.test_fraction,
                                   random_state=source.split_seed)
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return mask

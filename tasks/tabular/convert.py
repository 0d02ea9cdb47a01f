"""A site's columns checked cell by cell and converted: numbers, category and class codes.

Every problem is a `DataError`: one line naming the site, the file and the column (by its
local name, and the schema's when they differ), the first offending row (rows count
data rows from 1) and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.tasks.tabular.schema import TabularError, TabularSchema, canon


class DataError(TabularError):
    """A site's data file cannot be used as the schema says (one line)."""


@dataclass(frozen=True)
class Columns:
    """A site's rows, checked and converted (not yet imputed, standardised or one-hot).

    numeric : (n, numeric features) float64, NaN where a cell is empty.
    categorical : (n, categorical features) int64 category codes, -1 where empty.
    target : class codes (int64), regression targets or survival times (float64).
    event : survival only: 1.0 where the event was observed, 0.0 where censored.
    rows : the file's row numbers (from 1) of these rows.
    """

    numeric: np.ndarray
    categorical: np.ndarray
    target: np.ndarray
    event: np.ndarray | None
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, mask: np.ndarray) -> Columns:
        return Columns(self.numeric[mask], self.categorical[mask], self.target[mask],
                       None if self.event is None else self.event[mask], self.rows[mask])


class Namer:
    """Names a column in messages by its local name (and the schema's, when they differ)."""

    def __init__(self, where: str, local: Mapping[str, str]) -> None:
        self.where, self.local = where, local

    def __call__(self, shared: str) -> str:
        loc = self.local.get(shared, shared)
        return f"{self.where}: column {loc!r}" + ("" if loc == shared else f" (schema {shared!r})")


def convert(frame: pd.DataFrame, schema: TabularSchema, name: Namer) -> Columns:
    rows = frame.index.to_numpy() + 1
    numeric = [_numbers(frame[f.name], name(f.name), rows) for f in schema.numeric_features]
    categorical = [_codes(frame[f.name], f.categories or (), name(f.name), rows, "categories")
                   for f in schema.features if not f.numeric]
    _refuse_empty(schema, numeric, categorical, name, rows)
    event = None
    if schema.kind == "survival":
        target = _required(_numbers(frame[schema.time], name(str(schema.time)), rows),
                           name(str(schema.time)), rows)
        if (target < 0).any():
            bad = int(np.flatnonzero(target < 0)[0])
            raise DataError(f"{name(str(schema.time))}: expected a time >= 0, got {target[bad]:g} "
                            f"in row {rows[bad]}")
        event = _codes(frame[schema.event], (0, 1), name(str(schema.event)), rows,
                       "event values 0/1 or false/true").astype(np.float64)
        _required(np.where(event < 0, np.nan, event), name(str(schema.event)), rows)
    elif schema.kind == "regression":
        target = _required(_numbers(frame[schema.label], name(str(schema.label)), rows),
                           name(str(schema.label)), rows)
    else:
        target = _codes(frame[schema.label], schema.classes, name(str(schema.label)), rows,
                        "declared classes")
        _required(np.where(target < 0, np.nan, 0.0), name(str(schema.label)), rows)
    n = len(frame)
    return Columns(
        numeric=np.column_stack(numeric) if numeric else np.zeros((n, 0)),
        categorical=np.column_stack(categorical) if categorical else np.zeros((n, 0), np.int64),
        target=target, event=event, rows=rows,
    )


def _numbers(series: pd.Series, where: str, rows: np.ndarray) -> np.ndarray:
    """float64 values, NaN where empty; `DataError` on the first cell that is not a number."""
    if pd.api.types.is_bool_dtype(series):
        values = series.astype(float).to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = series.astype(object)
        empty = text.map(is_empty).to_numpy(dtype=bool)
        values = pd.to_numeric(text.where(~empty, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isnan(values) & ~empty)
        if len(bad):
            raise DataError(f"{where}: expected a number, got {shown(text.iloc[bad[0]])} in row "
                            f"{rows[bad[0]]} ({len(bad)} such cells)")
    inf = np.flatnonzero(np.isinf(values))
    if len(inf):
        raise DataError(f"{where}: expected a finite number, got {values[inf[0]]} in row "
                        f"{rows[inf[0]]}")
    return values


def _codes(series: pd.Series, values: tuple[Any, ...], where: str, rows: np.ndarray,
           what: str) -> np.ndarray:
    """int64 index of each cell's value in ``values``, -1 where empty; `DataError` on a cell
    holding anything else."""
    index = {canon(v): i for i, v in enumerate(values)}
    cells = series.tolist()
    codes = np.full(len(cells), -1, dtype=np.int64)
    for i, cell in enumerate(cells):
        if is_empty(cell):
            continue
        code = index.get(canon(cell))
        if code is None:
            raise DataError(f"{where}: {shown(cell)} in row {rows[i]} is not one of the {what} "
                            f"{list(values)}")
        codes[i] = code
    return codes


def _required(values: np.ndarray, where: str, rows: np.ndarray) -> np.ndarray:
    empty = np.flatnonzero(np.isnan(values))
    if len(empty):
        raise DataError(f"{where}: {len(empty)} empty cells ({_row_list(rows[empty])}); an "
                        "outcome column is never imputed")
    return values


def _refuse_empty(schema: TabularSchema, numeric: list[np.ndarray], categorical: list[np.ndarray],
                  name: Namer, rows: np.ndarray) -> None:
    """Refuse empty feature cells (with their count) unless the schema imputes the column."""
    numeric_iter, categorical_iter = iter(numeric), iter(categorical)
    found = []
    for feature in schema.features:
        empty = np.isnan(next(numeric_iter)) if feature.numeric else next(categorical_iter) < 0
        if feature.impute is None and empty.any():
            found.append((feature, empty))
    if not found:
        return
    feature, empty = found[0]
    also = "".join(f"; also {f.name!r}: {int(e.sum())}" for f, e in found[1:])
    how = '"mean"' if feature.numeric else '"<one of its categories>"'
    raise DataError(f"{name(feature.name)}: {int(empty.sum())} empty cells "
                    f"({_row_list(rows[empty])}){also}; fill them or declare an imputation: "
                    f"[task_options.impute] {feature.name} = {how}")


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def shown(value: Any) -> str:
    return repr(value.strip()) if isinstance(value, str) else repr(value)


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"row{'s' if len(rows) > 1 else ''} {shown}{', ...' if len(rows) > limit else ''}"

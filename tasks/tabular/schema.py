"""The shared schema of a tabular task, read once from the run config's ``[task_options]``.

::

    task = "tabular"
    [task_options]
    kind = "binary"                  # binary | multiclass | regression | survival
    label = "readmitted"             # binary, multiclass, regression
    classes = ["no", "yes"]          # binary (default [0, 1]; the second is positive), multiclass
    # time = "days"; event = "died"  # survival instead of label (event: 0/1 or false/true)
    model = "mlp"                    # linear (logistic / linear / Cox) | mlp
    hidden = [32, 16]                # mlp only
    batch_size = 32                  # default: the run's batch size (simulation), else 32;
                                     # survival: the site's whole training set (full batch:
                                     # risk sets span the site; take a larger lr, e.g. 1.0)
    optimizer = "sgd"                # sgd | adam (learning rate and epochs: the round config)
    weight_decay = 0.0
    seed = 0                         # initial model
    data = "visits.csv"              # simulation only: a file, or a directory (a file per site)

    [task_options.features]          # model inputs in name order (sorted)
    age = "numeric"
    sex = ["F", "M"]                 # categorical: its categories (one-hot, in this order)

    [task_options.impute]            # optional; otherwise an empty cell is refused
    age = "mean"                     # numeric: "mean" (the federated mean) or a number
    sex = "F"                        # categorical: one of its categories

Every problem is a `SchemaError` with one line naming the option (``task_options.x``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsilo.common.errors import FedsiloError

KINDS = ("binary", "multiclass", "regression", "survival")
MODELS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adam")
OPTIONS = ("kind", "features", "label", "classes", "time", "event", "impute", "model", "hidden",
           "batch_size", "optimizer", "weight_decay", "seed", "data", "test_fraction",
           "split_column")
KIND_METRICS = {
    "binary": ("accuracy", "auroc"),
    "multiclass": ("accuracy", "macro_f1"),
    "regression": ("rmse", "mae"),
    "survival": ("c_index",),
}


class TabularError(FedsiloError, ValueError):
    """A tabular task's options or a site's data are not usable (one line)."""


class SchemaError(TabularError):
    """``[task_options]`` of the tabular task is malformed (one line naming the option)."""


def canon(value: Any) -> str:
    """The comparison key of a class or category value: ``1``, ``1.0``, ``"1"``, ``True``
    and ``"true"`` are one value (files and TOML spell values differently)."""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number == int(number):
            return str(int(number))
        return repr(number)
    text = str(value).strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return "1" if lowered == "true" else "0"
    try:
        return canon(float(text))
    except ValueError:
        return text


@dataclass(frozen=True)
class Feature:
    """One model input: numeric (``categories`` None) or categorical (one-hot of ``categories``).

    ``impute``: None (empty cells refused), ``"mean"`` or a number (numeric), a category.
    """

    name: str
    categories: tuple[Any, ...] | None = None
    impute: Any = None

    @property
    def numeric(self) -> bool:
        return self.categories is None

    @property
    def width(self) -> int:
        return 1 if self.categories is None else len(self.categories)


@dataclass(frozen=True)
class TabularSchema:
    """The validated ``[task_options]`` of a tabular task (see the module docstring)."""

    kind: str
    features: tuple[Feature, ...]
    label: str | None = None
    classes: tuple[Any, ...] = ()
    time: str | None = None
    event: str | None = None
    model: str = "linear"
    hidden: tuple[int, ...] = ()
    batch_size: int | None = None
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    seed: int = 0
    data: str | None = None
    test_fraction: float = 0.2
    split_column: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TabularSchema:
        """Validate ``options`` (the ``[task_options]`` table); `SchemaError` on the first
        problem."""
        if not isinstance(options, Mapping):
            raise SchemaError(f"task_options must be a table, got {type(options).__name__}")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise SchemaError(f"task_options.{unknown[0]}: unknown option; accepted: "
                              f"{', '.join(OPTIONS)}")
        kind = _choice(options, "kind", KINDS, None)
        outcome = _outcome(options, kind)
        features = _features(options.get("features"))
        features = _imputations(options.get("impute", {}), features)
        taken = [f.name for f in features]
        for name in (outcome["label"], outcome["time"], outcome["event"]):
            if name is not None and name in taken:
                raise SchemaError(f"task_options: column {name!r} is both a feature and an outcome")
            taken.append(name)
        model = _choice(options, "model", MODELS, "linear")
        return cls(
            kind=kind, features=features, **outcome, model=model,
            hidden=_hidden(options.get("hidden"), model),
            batch_size=(_number(options, "batch_size", int, 32, low=1)
                        if "batch_size" in options else None),
            optimizer=_choice(options, "optimizer", OPTIMIZERS, "sgd"),
            weight_decay=float(_number(options, "weight_decay", float, 0.0, low=0)),
            seed=_number(options, "seed", int, 0),
            data=_text(options, "data", None),
            test_fraction=_fraction(options),
            split_column=_text(options, "split_column", None),
        )

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        if self.kind == "survival":
            return (str(self.time), str(self.event))
        return (str(self.label),)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every shared column a site's file must have (after its renames), features first."""
        return tuple(f.name for f in self.features) + self.outcome_columns

    @property
    def num_inputs(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.kind == "multiclass" else 1

    @property
    def numeric_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.numeric)

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", *KIND_METRICS[self.kind])

    def to_json(self) -> dict[str, Any]:
        """What every site must agree on (the schema digest): kind, columns, classes, imputation.

        Model and optimiser settings are left out: the model layout digest covers the model.
        """
        out: dict[str, Any] = {
            "kind": self.kind,
            "features": [
                {"name": f.name, "type": "numeric" if f.numeric else "categorical",
                 **({} if f.numeric else {"categories": [canon(c) for c in f.categories or ()]}),
                 **({} if f.impute is None else {"impute": canon(f.impute)})}
                for f in self.features
            ],
        }
        if self.kind == "survival":
            out.update(time=self.time, event=self.event)
        else:
            out["label"] = self.label
        if self.classes:
            out["classes"] = [canon(c) for c in self.classes]
        return out


def _outcome(options: Mapping[str, Any], kind: str) -> dict[str, Any]:
    if kind == "survival":
        for name in ("label", "classes"):
            if name in options:
                raise SchemaError(f"task_options.{name}: not used by kind = \"survival\" "
                                  "(it takes time and event)")
        time, event = _text(options, "time", ...), _text(options, "event", ...)
        if time == event:
            raise SchemaError("task_options.event: must differ from task_options.time")
        return {"label": None, "classes": (), "time": time, "event": event}
    for name in ("time", "event"):
        if name in options:
            raise SchemaError(f"task_options.{name}: only for kind = \"survival\"")
    label = _text(options, "label", ...)
    if kind == "regression":
        if "classes" in options:
            raise SchemaError("task_options.classes: not used by kind = \"regression\"")
        return {"label": label, "classes": (), "time": None, "event": None}
    default = [0, 1] if kind == "binary" else None
    classes = _values(options.get("classes", default), "task_options.classes")
    if kind == "binary" and len(classes) != 2:
        raise SchemaError(f"task_options.classes: kind = \"binary\" takes exactly 2 classes "
                          f"(negative, positive), got {len(classes)}")
    if kind == "multiclass" and len(classes) < 2:
        raise SchemaError("task_options.classes: kind = \"multiclass\" needs at least 2 classes")
    return {"label": label, "classes": classes, "time": None, "event": None}


def _features(raw: Any) -> tuple[Feature, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise SchemaError("task_options.features: expected a table of at least one column, "
                          "e.g. {age = \"numeric\", sex = [\"F\", \"M\"]}")
    out = []
    # sorted by name: a table's order does not survive every serialisation (JSON with
    # sorted keys, Flower's records), and the model's inputs must be the same everywhere
    for name, spec in sorted(raw.items()):
        where = f"task_options.features.{name}"
        if spec == "numeric":
            out.append(Feature(str(name)))
        elif isinstance(spec, list):
            out.append(Feature(str(name), _values(spec, where)))
        else:
            raise SchemaError(f"{where}: expected \"numeric\" or a list of categories, "
                              f"got {spec!r}")
    return tuple(out)


def _imputations(raw: Any, features: tuple[Feature, ...]) -> tuple[Feature, ...]:
    if not isinstance(raw, Mapping):
        raise SchemaError(f"task_options.impute: expected a table {{column = ...}}, got {raw!r}")
    by_name = {f.name: f for f in features}
    for name, how in raw.items():
        where = f"task_options.impute.{name}"
        feature = by_name.get(str(name))
        if feature is None:
            raise SchemaError(f"{where}: not a feature (only features are imputed; the outcome "
                              "columns never are)")
        if feature.numeric:
            if how != "mean" and (isinstance(how, bool) or not isinstance(how, int | float)):
                raise SchemaError(f"{where}: expected \"mean\" or a number, got {how!r}")
        elif canon(how) not in {canon(c) for c in feature.categories or ()}:
            raise SchemaError(f"{where}: expected one of the categories "
                              f"{list(feature.categories or ())}, got {how!r}")
        by_name[feature.name] = Feature(feature.name, feature.categories, how)
    return tuple(by_name[f.name] for f in features)


def _values(raw: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(raw, list) or not raw:
        raise SchemaError(f"{where}: expected a non-empty list of values, got {raw!r}")
    for value in raw:
        if not isinstance(value, str | int | float | bool):
            raise SchemaError(f"{where}: values must be strings, numbers or booleans, "
                              f"got {value!r}")
    keys = [canon(v) for v in raw]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise SchemaError(f"{where}: duplicate value {dupes[0]!r}")
    return tuple(raw)


def _hidden(raw: Any, model: str) -> tuple[int, ...]:
    if model == "linear":
        if raw is not None:
            raise SchemaError("task_options.hidden: only for model = \"mlp\"")
        return ()
    if raw is None:
        return (32,)
    if (not isinstance(raw, list) or not raw
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in raw)):
        raise SchemaError(f"task_options.hidden: expected a list of positive layer sizes such as "
                          f"[32, 16], got {raw!r}")
    return tuple(raw)


def _choice(options: Mapping[str, Any], name: str, accepted: tuple[str, ...],
            default: str | None) -> str:
    value = options.get(name, default)
    if value not in accepted:
        got = "missing" if value is None else f"got {value!r}"
        raise SchemaError(f"task_options.{name}: expected one of {', '.join(accepted)}; {got}")
    return str(value)


def _text(options: Mapping[str, Any], name: str, default: Any) -> Any:
    if name not in options:
        if default is ...:
            raise SchemaError(f"task_options.{name}: missing (the column's name)")
        return default
    value = options[name]
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"task_options.{name}: expected a non-empty string, got {value!r}")
    return value


def _number(options: Mapping[str, Any], name: str, kind: type, default: Any,
            low: float | None = None) -> Any:
    value = options.get(name, default)
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and (kind is float or isinstance(value, int)) and math.isfinite(value))
    if not ok or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        expected = "an integer" if kind is int else "a number"
        raise SchemaError(f"task_options.{name}: expected {expected}{bound}, got {value!r}")
    return value


def _fraction(options: Mapping[str, Any]) -> float:
    value = _number(options, "test_fraction", float, 0.2)
    if not 0 < value < 1:
        raise SchemaError(f"task_options.test_fraction: expected a number between 0 and 1 "
                          f"(exclusive), got {value!r}")
    return float(value)

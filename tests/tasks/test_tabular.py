"""The built-in ``tabular`` task on real CSV and Parquet files written by the tests.

Each kind learns a bundled data set (scikit-learn's, and lifelines' Rossi recidivism
data for survival) better than a trivial baseline; federated standardisation equals the
pooled rows' statistics; every bad input gives its exact one-line message; sites with
their own column names and formats agree; a user's files are split into simulated sites
by a column or one file per site, and simulated end to end through ``fedsilo simulate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsilo.simulations.partition import PartitionError, PartitionSpec, partition
from fedsilo.simulations.user_data import user_sites
from fedsilo.tasks import SiteData, resolve_task
from fedsilo.tasks.statistics import sum_statistics
from fedsilo.tasks.tabular import DataError, SchemaError, TabularTask
from fedsilo.tasks.tabular.model import cox_partial_nll
from fedsilo.tasks.tabular.stats import Standardisation

SMALL = {"kind": "binary", "label": "y", "features": {"age": "numeric", "sex": ["F", "M"]}}


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _small(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"age": [30 + 3 * i for i in range(n)],
                         "sex": ["F", "M"] * (n // 2), "y": [0, 1, 1, 0] * (n // 4)})


def _fedavg(task: TabularTask, sites: list[SiteData], rounds: int, lr: float) -> list[Any]:
    """Plain FedAvg over the task's own trainers (sums of statistics first, as the server)."""
    stats = sum_statistics([(s.site_id, task.site_statistics(s)) for s in sites])
    trainers = [task.build_trainer(s, stats) for s in sites]
    weights = task.initial_weights()
    for r in range(1, rounds + 1):
        fits = [t.fit(weights, {"server_round": r, "lr": lr, "local_epochs": 1}) for t in trainers]
        total = sum(f.num_examples for f in fits)
        weights = {k: (sum(f.weights[k] * f.num_examples for f in fits) / total).astype(np.float32)
                   for k in weights}
    return [t.evaluate(weights, {}) for t in trainers]


def _three_sites(frame: pd.DataFrame, path: Path) -> list[SiteData]:
    _write(frame, path)
    parts = np.array_split(np.random.default_rng(0).permutation(len(frame)), 3)
    return [SiteData(f"s{i}", {"path": str(path), "rows": sorted(p.tolist())})
            for i, p in enumerate(parts)]


def _sklearn(name: str) -> tuple[pd.DataFrame, dict[str, str]]:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
              "diabetes": lambda **kw: datasets.load_diabetes(scaled=False, **kw)}[name]
    frame = loader(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame, {c: "numeric" for c in frame.columns if c != "target"}


# ----------------------------------------------------------------------- each kind learns
def test_binary_breast_cancer_csv_beats_the_majority_class(tmp_path: Path) -> None:
    frame, features = _sklearn("breast_cancer")
    task = TabularTask({"kind": "binary", "label": "target", "features": features})
    evals = _fedavg(task, _three_sites(frame, tmp_path / "bc.csv"), rounds=10, lr=0.1)
    majority = max(frame.target.mean(), 1 - frame.target.mean())  # 0.63
    assert task.metric_names() == ("loss", "accuracy", "auroc")
    assert min(e.metrics["accuracy"] for e in evals) > majority + 0.2
    assert min(e.metrics["auroc"] for e in evals) > 0.95


def test_multiclass_wine_parquet_with_an_mlp_beats_the_majority_class(tmp_path: Path) -> None:
    frame, features = _sklearn("wine")
    task = TabularTask({"kind": "multiclass", "label": "target", "classes": [0, 1, 2],
                        "features": features, "model": "mlp", "hidden": [16]})
    evals = _fedavg(task, _three_sites(frame, tmp_path / "wine.parquet"), rounds=15, lr=0.1)
    assert list(task.initial_weights()) == ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]
    assert np.mean([e.metrics["accuracy"] for e in evals]) > 0.85  # majority class: 0.40
    assert np.mean([e.metrics["macro_f1"] for e in evals]) > 0.8


def test_regression_diabetes_csv_beats_predicting_the_mean(tmp_path: Path) -> None:
    frame, features = _sklearn("diabetes")
    task = TabularTask({"kind": "regression", "label": "target", "features": features})
    evals = _fedavg(task, _three_sites(frame, tmp_path / "diabetes.csv"), rounds=20, lr=0.05)
    baseline = float(frame.target.std(ddof=0))  # RMSE of predicting the mean: about 77
    assert task.metric_names() == ("loss", "rmse", "mae")
    assert max(e.metrics["rmse"] for e in evals) < 0.82 * baseline
    for e in evals:  # the loss is the MSE in the target's own units
        assert e.loss == pytest.approx(e.metrics["rmse"] ** 2, rel=1e-6)


def test_survival_rossi_parquet_cox_model_beats_chance(tmp_path: Path) -> None:
    from lifelines.datasets import load_rossi

    frame = load_rossi().assign(arrest=lambda f: f.arrest.astype(bool))  # a boolean event
    features = {c: "numeric" for c in frame.columns if c not in ("week", "arrest")}
    task = TabularTask({"kind": "survival", "time": "week", "event": "arrest",
                        "features": features})
    # survival trains full-batch: one gradient step a round, hence the larger lr
    evals = _fedavg(task, _three_sites(frame, tmp_path / "rossi.parquet"), rounds=20, lr=1.0)
    assert "out.bias" not in task.initial_weights()  # a Cox model has no intercept
    assert np.mean([e.metrics["c_index"] for e in evals]) > 0.62  # chance: 0.5


def test_cox_loss_is_breslow_partial_likelihood_with_ties() -> None:
    import torch

    risk = torch.tensor([0.3, -0.2, 0.9, 0.1, 0.0])
    time = torch.tensor([5.0, 3.0, 3.0, 8.0, 1.0])
    event = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    expected = 0.0
    for i in range(5):  # the definition, row by row: risk set = time_j >= time_i
        if event[i]:
            at_risk = time >= time[i]
            expected -= float(risk[i] - torch.logsumexp(risk[at_risk], 0))
    assert float(cox_partial_nll(risk, time, event)) == pytest.approx(expected / 3, rel=1e-6)
    no_events = cox_partial_nll(risk, time, torch.zeros(5))
    assert float(no_events) == 0.0


# ------------------------------------------------------------- federated standardisation
def test_federated_standardisation_equals_the_pooled_training_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    options = {"kind": "regression", "label": "y", "impute": {"a": "mean"},
               "features": {"a": "numeric", "b": "numeric", "c": ["x", "z"]}}
    task = TabularTask(options)
    sites = []
    for i, suffix in enumerate((".csv", ".parquet", ".csv")):
        n = 40 + 10 * i
        frame = pd.DataFrame({"a": rng.normal(100 * i, 1 + i, n), "b": rng.exponential(3, n),
                              "c": rng.choice(["x", "z"], n), "y": rng.normal(50, 9, n)})
        frame.loc[[2, 7], "a"] = np.nan  # empty cells, imputed: not counted in the statistics
        sites.append(SiteData(f"s{i}", {"path": str(_write(frame, tmp_path / f"s{i}{suffix}"))}))
    per_site = [(s.site_id, task.site_statistics(s)) for s in sites]
    for _, stats in per_site:  # only sums leave a site: one number per feature, no rows
        assert {k: np.shape(v) for k, v in stats.items()} == {
            "count": (2,), "sum": (2,), "sumsq": (2,), "target_count": (1,),
            "target_sum": (1,), "target_sumsq": (1,)}
    scale = Standardisation.from_statistics(task.spec, sum_statistics(per_site))
    pooled = np.concatenate([task.site_table(s).train.numeric for s in sites])
    target = np.concatenate([task.site_table(s).train.target for s in sites])
    np.testing.assert_allclose(scale.mean, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(scale.std, np.nanstd(pooled, axis=0), rtol=1e-9)
    assert scale.target_mean == pytest.approx(target.mean(), rel=1e-12)
    assert scale.target_std == pytest.approx(target.std(), rel=1e-9)
    # every site standardises with the federation's statistics: pooled inputs are z-scores
    trainers = [task.build_trainer(s, sum_statistics(per_site)) for s in sites]
    x = np.concatenate([t._x.numpy() for t in trainers])
    observed = ~np.isnan(pooled)
    for j in range(2):
        assert x[observed[:, j], j].mean() == pytest.approx(0.0, abs=1e-5)
        assert x[observed[:, j], j].std() == pytest.approx(1.0, abs=1e-5)
    assert (x[~observed[:, 0], 0] == 0).all()  # imputed with the federated mean


# --------------------------------------------------------------------------- bad schema
@pytest.mark.parametrize(("options", "message"), [
    ({**SMALL, "kind": "ordinal"},
     "task_options.kind: expected one of binary, multiclass, regression, survival; got 'ordinal'"),
    ({**SMALL, "featurs": {}},
     "task_options.featurs: unknown option; accepted: kind, features, label, classes, time, "
     "event, impute, model, hidden, batch_size, optimizer, weight_decay, seed, data, "
     "test_fraction, split_column"),
    ({**SMALL, "features": {"age": "number"}},
     "task_options.features.age: expected \"numeric\" or a list of categories, got 'number'"),
    ({**SMALL, "classes": [0, 1, 2]},
     "task_options.classes: kind = \"binary\" takes exactly 2 classes (negative, positive), got 3"),
    ({**SMALL, "impute": {"y": "mean"}},
     "task_options.impute.y: not a feature (only features are imputed; the outcome columns "
     "never are)"),
    ({**SMALL, "impute": {"sex": "X"}},
     "task_options.impute.sex: expected one of the categories ['F', 'M'], got 'X'"),
    ({**SMALL, "model": "mlp", "hidden": [0]},
     "task_options.hidden: expected a list of positive layer sizes such as [32, 16], got [0]"),
    ({"kind": "survival", "time": "t", "features": {"a": "numeric"}},
     "task_options.event: missing (the column's name)"),
])
def test_bad_task_options_one_line_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        TabularTask(options)
    assert str(info.value) == message


# ----------------------------------------------------------------------------- bad data
def _site_error(tmp_path: Path, frame: pd.DataFrame | str, name: str = "a.csv",
                options: dict | None = None, data: dict | None = None) -> str:
    path = tmp_path / name
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        _write(frame, path)
    task = TabularTask(options or SMALL)
    with pytest.raises(DataError) as info:
        task.build_trainer(SiteData("hosp-a", {"path": name, **(data or {})}, base_dir=tmp_path))
    assert "\n" not in str(info.value)
    return str(info.value).replace(str(tmp_path), "<tmp>")


def test_bad_data_each_gives_its_one_line_message(tmp_path: Path) -> None:
    good = _small()
    where = "site hosp-a: <tmp>/a.csv"
    assert _site_error(tmp_path, good.drop(columns=["sex"])) == (
        f"{where}: missing column 'sex'; if the file names it differently, map it: "
        "[data] columns = {local_name = \"sex\"}")
    assert _site_error(tmp_path, good.assign(zip="x")) == (
        f"{where}: extra column 'zip' (not in the schema); map it onto a schema column or drop "
        "it: [data] ignore = [\"zip\"]")
    assert _site_error(tmp_path, good.assign(age=["41"] * 5 + ["forty"] + ["40"] * 6)) == (
        f"{where}: column 'age': expected a number, got 'forty' in row 6 (1 such cells)")
    assert _site_error(tmp_path, good.assign(y=[0, 1, 2] + [0] * 9)) == (
        f"{where}: column 'y': '2' in row 3 is not one of the declared classes [0, 1]")
    assert _site_error(tmp_path, good.assign(sex=["F", "?"] * 6)) == (
        f"{where}: column 'sex': '?' in row 2 is not one of the categories ['F', 'M']")
    assert _site_error(tmp_path, good.assign(age=[np.nan, 1, np.nan] + [5] * 8 + [np.nan])) == (
        f"{where}: column 'age': 3 empty cells (rows 1, 3, 12); fill them or declare an "
        "imputation: [task_options.impute] age = \"mean\"")
    assert _site_error(tmp_path, good.assign(y=[0, 1, None] + [1] * 9)) == (
        f"{where}: column 'y': 1 empty cells (row 3); an outcome column is never imputed")
    assert _site_error(tmp_path, "age,sex,y\n") == f"{where}: empty file (a header and no rows)"
    assert _site_error(tmp_path, "") == f"{where}: empty file (no header, no rows)"
    assert _site_error(tmp_path, good, name="a.xlsx") == (
        "site hosp-a: <tmp>/a.xlsx: expected a .csv, .parquet or .pq file")
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=f"^site b: {missing}: file not found$"):
        TabularTask(SMALL).build_trainer(SiteData("b", {"path": str(missing)}))


def test_bad_data_in_a_renamed_parquet_column_names_the_local_column(tmp_path: Path) -> None:
    frame = _small().rename(columns={"age": "AGE_YRS"})
    frame = frame.assign(AGE_YRS=["41"] * 3 + ["x"] + ["1"] * 8)
    assert _site_error(tmp_path, frame, "b.parquet", data={"columns": {"AGE_YRS": "age"}}) == (
        "site hosp-a: <tmp>/b.parquet: column 'AGE_YRS' (schema 'age'): expected a number, got "
        "'x' in row 4 (1 such cells)")
    assert _site_error(tmp_path, _small(), data={"columns": {"Age": "age"}}) == (
        "site hosp-a: <tmp>/a.csv: [data] columns maps 'Age', which the file does not have")
    assert _site_error(tmp_path, _small(), data={"split_column": "part"}) == (
        "site hosp-a: <tmp>/a.csv: missing split column 'part'")
    assert _site_error(tmp_path, _small(), data={"test_fraction": 1.5}) == (
        "site hosp-a: [data]: test_fraction must be a number between 0 and 1, got 1.5")


def test_declared_imputation_accepts_empty_cells(tmp_path: Path) -> None:
    frame = _small().assign(age=[np.nan] * 3 + [40.0] * 9, sex=[None, "M"] + ["F"] * 10)
    _write(frame, tmp_path / "a.csv")
    task = TabularTask({**SMALL, "impute": {"age": 35, "sex": "F"}})
    trainer = task.build_trainer(SiteData("a", {"path": "a.csv"}, base_dir=tmp_path))
    assert np.isfinite(trainer._x.numpy()).all()
    assert trainer.num_examples() + len(trainer.eval_target) == 12


# ------------------------------------------------------------------- renames and formats
def test_three_sites_with_their_own_column_names_and_formats_agree(tmp_path: Path) -> None:
    base = pd.DataFrame({"age": np.arange(30.0, 90.0), "sex": ["F", "M", "M"] * 20,
                         "y": ([0] * 10 + [1] * 10) * 3})
    a = base.rename(columns={"age": "Age", "sex": "SEX", "y": "readmitted"})
    b = base.rename(columns={"age": "age_years", "sex": "gender"}).assign(
        sex_code=1, split=["train", "train", "test"] * 20)
    c = base.assign(patient_id=range(60))
    _write(a, tmp_path / "a.csv")
    _write(b, tmp_path / "b.parquet")
    _write(c, tmp_path / "c.pq")
    sites = [
        SiteData("a", {"path": "a.csv", "columns": {"Age": "age", "SEX": "sex", "readmitted": "y"}},
                 base_dir=tmp_path),
        SiteData("b", {"path": "b.parquet", "columns": {"age_years": "age", "gender": "sex"},
                       "ignore": ["sex_code"], "split_column": "split"}, base_dir=tmp_path),
        SiteData("c", {"path": "c.pq", "ignore": ["patient_id"], "test_fraction": 0.25,
                       "split_seed": 7}, base_dir=tmp_path),
    ]
    task = TabularTask(SMALL)
    tables = [task.site_table(s) for s in sites]
    for table in tables:  # the same rows, whatever the file called its columns
        np.testing.assert_array_equal(np.sort(np.concatenate(
            [table.train.numeric[:, 0], table.test.numeric[:, 0]])), base.age.to_numpy())
    assert len(tables[1].test) == 20  # the split column's "test" rows
    assert len(tables[2].test) == 15  # 25 % of 60
    evals = _fedavg(task, sites, rounds=2, lr=0.1)
    assert all(np.isfinite(e.loss) for e in evals)
    fingerprints = {task.build_trainer(s).data_fingerprint() for s in sites}
    assert len(fingerprints) == 3
    # the identity every site announces does not depend on its file
    assert resolve_task("tabular", SMALL).identity() == task.identity()


# ------------------------------------------------------------------ user data partitions
def test_partition_spec_column() -> None:
    spec = PartitionSpec.parse("column:hospital")
    assert (spec.kind, spec.column, str(spec)) == ("column", "hospital", "column:hospital")
    with pytest.raises(PartitionError, match=r"^column:hospital splits a data file by its column"):
        partition(np.zeros(10), 2, spec, 0)


def _options(data: Path, **extra: Any) -> str:
    return json.dumps({**SMALL, "data": str(data), **extra}, sort_keys=True)


def test_column_partition_one_site_per_value(tmp_path: Path) -> None:
    frame = pd.concat([_small(12), _small(8), _small(4)], ignore_index=True)
    frame["hospital"] = ["St Mary's"] * 12 + ["north"] * 8 + ["2"] * 4
    path = _write(frame, tmp_path / "all.csv")
    found = user_sites(_options(path), "column:hospital", 10, 0)
    assert found.site_ids == ("2", "St-Mary-s", "north")
    task = TabularTask(json.loads(_options(path)))
    sizes = [len(task.site_table(SiteData(sid, opts)).train) + len(task.site_table(
        SiteData(sid, opts)).test) for sid, opts in zip(found.site_ids, found.options, strict=True)]
    assert sizes == [4, 12, 8]
    with pytest.raises(PartitionError, match="column:site: .* has no column 'site'"):
        user_sites(_options(path), "column:site", 10, 0)
    _write(frame.assign(hospital=[None] + ["a"] * 23), tmp_path / "holes.csv")
    with pytest.raises(DataError, match=r"column 'hospital': 1 empty cells \(row 1...\); every "
                                        "row must name its site$"):
        user_sites(_options(tmp_path / "holes.csv"), "column:hospital", 10, 0)


def test_directory_one_site_per_file_and_synthetic_splits(tmp_path: Path) -> None:
    folder = tmp_path / "sites"
    folder.mkdir()
    _write(_small(12), folder / "clinic-b.parquet")
    _write(_small(8), folder / "clinic-a.csv")
    (folder / "README.txt").write_text("not data")
    found = user_sites(_options(folder), "dirichlet:0.5", 10, 0)
    assert found.site_ids == ("clinic-a", "clinic-b")
    assert [Path(o["path"]).name for o in found.options] == ["clinic-a.csv", "clinic-b.parquet"]
    with pytest.raises(PartitionError, match="is a directory"):
        user_sites(_options(folder), "column:x", 10, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no .csv, .parquet or .pq file \(one per site\)$"):
        user_sites(_options(empty), "iid", 3, 0)
    # a synthetic split of one file: disjoint rows covering the file, label-skewed
    path = _write(pd.concat([_small(40)] * 3, ignore_index=True), tmp_path / "one.csv")
    found = user_sites(_options(path), "shards:1", 4, 0)
    rows = [r for o in found.options for r in o["rows"]]
    assert found.site_ids == ("site-000", "site-001", "site-002", "site-003")
    assert sorted(rows) == list(range(120))


# ----------------------------------------------------------------------------- end to end
def _run_toml(tmp_path: Path, data: Path, partition: str = "iid") -> Path:
    run = tmp_path / "run.toml"
    run.write_text(
        f'rounds = 8\nlr = 0.3\nlocal_epochs = 2\npartition = "{partition}"\n\n'
        '[task_options]\nkind = "binary"\n'
        f'label = "y"\ndata = "{data}"\nfeatures = {{age = "numeric", sex = ["F", "M"]}}\n')
    return run


def test_simulate_three_files_end_to_end(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from fedsilo.cli import main

    folder = tmp_path / "sites"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, suffix in (("a", ".csv"), ("b", ".parquet"), ("c", ".csv")):
        age = rng.uniform(20, 90, 60)
        frame = pd.DataFrame({"age": age.round(1), "sex": rng.choice(["F", "M"], 60),
                              "y": (age + rng.normal(0, 8, 60) > 55).astype(int)})
        _write(frame, folder / f"{name}{suffix}")
    out = tmp_path / "runs"
    code = main(["simulate", "--task", "tabular", "--config", str(_run_toml(tmp_path, folder)),
                 "--engine", "inprocess", "--out", str(out), "--run-id", "r", "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "r" / "metrics.json").read_text())
    assert metrics["closing_reason"] == "completed"
    last = metrics["rounds"][-1]["site_eval"]["sites"]
    assert sorted(last) == ["a", "b", "c"]
    assert min(s["accuracy"] for s in last.values()) > 0.7
    assert sorted(p.name for p in (out / "r" / "sites").iterdir()) == ["a", "b", "c"]
    # the federated statistics the sites standardised with, in lineage: the sums of each
    # site's training rows (a site's own split, read here as the site reads it)
    from fedsilo import lineage

    recorded = lineage.read_chain(out / "r" / "lineage.sqlite")[0]["body"]["task"]["statistics"]
    task = TabularTask({**json.loads(_options(folder))})
    expected = sum_statistics([(s, task.site_statistics(SiteData(s, {"path": str(p)})))
                               for s, p in (("a", folder / "a.csv"), ("b", folder / "b.parquet"),
                                            ("c", folder / "c.csv"))])
    assert recorded["sites"] == 3 and recorded["values"]["count"] == [144.0]
    for key, value in expected.items():
        np.testing.assert_allclose(recorded["values"][key], value, rtol=1e-12)


def test_simulate_refuses_a_bad_site_file_before_any_round(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsilo.cli import main

    frame = pd.concat([_small(12)] * 2, ignore_index=True)
    frame["site"] = ["a"] * 12 + ["b"] * 12
    frame.loc[20, "y"] = 3
    path = _write(frame, tmp_path / "all.csv")
    out = tmp_path / "runs"
    code = main(["simulate", "--task", "tabular", "--config",
                 str(_run_toml(tmp_path, path, "column:site")), "--engine", "inprocess",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (f"fedsilo simulate: error: task_options.data: site b: {path}: column 'y': '3' "
                   "in row 21 is not one of the declared classes [0, 1]")
    assert not out.exists() or list(out.iterdir()) == []

"""Synthetic 30-day readmission data for three hospitals (no real patients).

Each hospital exports its own file, in its own format and with its own column names:

    sites/north/admissions.csv   AGE, LOS_DAYS, PRIOR_ADM, WARD, READMIT_30D, patient_id
    sites/south/visits.parquet   age_years, length_of_stay, previous_stays, unit, readmitted
    sites/east/stays.csv         Age, StayDays, PriorVisits, Department, Readmission

Each site's ``site.toml`` (next to its file) maps these names onto the shared schema of
``run.toml``. The same rows, under the shared names, also go to ``data/north.csv``,
``data/south.parquet`` and ``data/east.csv``: the directory ``fedsilo simulate`` splits
into one site per file. The hospitals differ in size, case mix and readmission rate.

    python examples/tabular-readmission/make_data.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
WARDS = ("medical", "surgical", "cardiac")
# site: rows, file, format, mean age, ward mix, local column names (shared name -> local)
SITES = {
    "north": (600, "admissions.csv", (70, (0.5, 0.3, 0.2)),
              {"age": "AGE", "length_of_stay": "LOS_DAYS", "prior_admissions": "PRIOR_ADM",
               "ward": "WARD", "readmitted": "READMIT_30D"}),
    "south": (400, "visits.parquet", (62, (0.3, 0.5, 0.2)),
              {"age": "age_years", "length_of_stay": "length_of_stay",
               "prior_admissions": "previous_stays", "ward": "unit",
               "readmitted": "readmitted"}),
    "east": (250, "stays.csv", (66, (0.3, 0.2, 0.5)),
             {"age": "Age", "length_of_stay": "StayDays", "prior_admissions": "PriorVisits",
              "ward": "Department", "readmitted": "Readmission"}),
}


def hospital(rng: np.random.Generator, n: int, mean_age: float,
             wards: tuple[float, ...]) -> pd.DataFrame:
    """``n`` stays under the shared column names; readmission from a logistic model."""
    age = rng.normal(mean_age, 12, n).clip(18, 100).round()
    stay = rng.gamma(2.0, 2.5, n).round(1)
    prior = rng.poisson(1.2, n)
    ward = rng.choice(WARDS, n, p=wards)
    risk = (0.05 * (age - 65) + 0.35 * (stay - 5) + 0.8 * prior
            + 1.2 * (ward == "cardiac") - 0.6 * (ward == "surgical") - 1.0)
    readmitted = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
    return pd.DataFrame({"age": age, "length_of_stay": stay, "prior_admissions": prior,
                         "ward": ward, "readmitted": readmitted})


def write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for site, (n, file, (mean_age, wards), names) in SITES.items():
        shared = hospital(rng, n, mean_age, wards)
        suffix = Path(file).suffix
        write(shared, args.out / "data" / f"{site}{suffix}")
        local = shared.rename(columns=names)
        if site == "north":  # an identifier the model must not see (site.toml: ignore)
            local.insert(0, "patient_id", [f"N{i:05d}" for i in range(n)])
        write(local, args.out / "sites" / site / file)
        print(f"{site}: {n} stays, {shared.readmitted.mean():.0%} readmitted -> "
              f"sites/{site}/{file}, data/{site}{suffix}")


if __name__ == "__main__":
    main()

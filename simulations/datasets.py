"""Datasets that ship inside scikit-learn, so simulations run offline."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DATASETS = ("digits", "breast_cancer", "wine")


@dataclass(frozen=True)
class Dataset:
    """A tabular classification task split into a federated part and a held-out test part.

    Parameters
    ----------
    name : dataset name (one of `DATASETS`).
    x_train, y_train : the samples distributed over the sites (features standardised
        with statistics of this part only).
    x_test, y_test : the held-out split, evaluated centrally by the server each round.
    num_classes : number of labels.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    bunch = loaders[name]()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


@lru_cache(maxsize=8)
def load_dataset(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``name``, hold out a stratified ``test_fraction`` (seeded), standardise features."""
    from sklearn.model_selection import train_test_split

    x, y = _raw(name)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0
    x_tr = ((x_tr - mean) / std).astype(np.float32)
    x_te = ((x_te - mean) / std).astype(np.float32)
    for arr in (x_tr, x_te, y_tr, y_te):
        arr.setflags(write=False)
    return Dataset(name, x_tr, y_tr, x_te, y_te, int(y.max()) + 1)

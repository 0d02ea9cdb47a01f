"""Bundled datasets, so simulations run offline.

digits, breast_cancer and wine ship inside scikit-learn. mnist1d (Greydanus 2020, a
1-D analogue of MNIST: 5,000 sequences of length 40, 10 classes) is generated
procedurally by the `mnist1d` package at load time, never downloaded; unlike digits,
a small MLP does not saturate on it (roughly 0.6-0.75 test accuracy), so it shows
differences between aggregators that digits hides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import numpy as np

DATASETS = ("digits", "breast_cancer", "wine", "mnist1d")

# mnist1d generation seed: the package's own default, so the data are the
# canonical MNIST-1D samples (same templates, transforms and seed).
MNIST1D_SEED = 42


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


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D generated with the package's default arguments (seed `MNIST1D_SEED`).

    `mnist1d.data.make_dataset` is used directly (not ``get_dataset``, which tries a
    download first and writes a pickle to the working directory). It reseeds NumPy's and
    Python's global generators, so their states are saved and restored around it: loading
    a dataset must not change any other seeded stream of the process.
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = MNIST1D_SEED
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    # The package's own 80/20 split is merged back: `load_dataset` makes the same
    # stratified, seeded split for every dataset.
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist1d":
        return _mnist1d()
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }
    bunch = loaders[name]()  # a name in DATASETS: `load_dataset` checked it
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


@lru_cache(maxsize=8)
def load_dataset(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``name``, hold out a stratified ``test_fraction`` (seeded), standardise features.

    The result is kept in the dataset cache (`cache_dir`): a deployed demo site runs every
    message in a fresh ClientApp process, and importing scikit-learn to rebuild the split
    cost each of them about a second of CPU.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    path = _cache_path(name, test_fraction, seed)
    cached = _read_cached(name, path)
    if cached is not None:
        return cached
    dataset = _split(name, test_fraction, seed)
    _write_cached(dataset, path)
    return dataset


def _split(name: str, test_fraction: float, seed: int) -> Dataset:
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


# ------------------------------------------------------------------ the dataset cache
CACHE_ENV = "FEDSILO_CACHE_DIR"
"""Directory of the dataset cache; an empty value turns the cache off."""
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cache_dir() -> Path | None:
    """Where split datasets are cached: ``$FEDSILO_CACHE_DIR`` (empty: no cache), else
    ``$XDG_CACHE_HOME/fedsilo/datasets`` (``~/.cache`` when unset)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value) if value else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedsilo" / "datasets"


def _cache_path(name: str, test_fraction: float, seed: int) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    # the versions of what produced the arrays: another one may split or round otherwise
    source = version("mnist1d" if name == "mnist1d" else "scikit-learn")
    return root / f"{name}-test{test_fraction!r}-seed{seed}-src{source}-np{np.__version__}.npz"


def _read_cached(name: str, path: Path | None) -> Dataset | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = [saved[k] for k in _ARRAYS]
            num_classes = int(saved["num_classes"])
    except (OSError, ValueError, KeyError):  # unreadable: rebuilt and rewritten
        return None
    for arr in arrays:
        arr.setflags(write=False)
    return Dataset(name, *arrays, num_classes)


def _write_cached(dataset: Dataset, path: Path | None) -> None:
    """Write atomically (processes may build the same split at once); a cache that cannot
    be written is skipped."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            np.savez(f, num_classes=dataset.num_classes,
                     **{k: getattr(dataset, k) for k in _ARRAYS})
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)

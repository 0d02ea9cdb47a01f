"""MNIST-1D: generated offline by the `mnist1d` package, loaded like every bundled dataset."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from fedsilo.server.config import ConfigError, RunConfig
from fedsilo.simulations.datasets import DATASETS, _raw, load_dataset
from fedsilo.simulations.runner import run_federation


def test_shapes_classes_and_stratified_split() -> None:
    data = load_dataset("mnist1d")
    assert "mnist1d" in DATASETS
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.num_classes == 10 and data.num_features == 40
    # 500 samples per class; the stratified 20% split keeps exactly 100 of each for testing
    assert np.bincount(data.y_test).tolist() == [100] * 10
    assert np.bincount(data.y_train).tolist() == [400] * 10
    # standardised with the training part's statistics only
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-4)
    assert not data.x_train.flags.writeable


def test_generation_is_the_canonical_seeded_mnist1d() -> None:
    """The package's default arguments and seed 42: these are its first samples."""
    x, y = _raw("mnist1d")
    assert x.shape == (5000, 40) and y.shape == (5000,)
    assert y[:10].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]
    np.testing.assert_allclose(
        x[0, :5], [-0.33200567, -0.47191037, -0.77869708, -1.00974083, -0.88235257], rtol=1e-6
    )
    x2, y2 = _raw("mnist1d")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_generation_leaves_global_rngs_alone_and_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("mnist1d must be generated, not downloaded")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.chdir(tmp_path)  # the package's get_dataset would write a pickle here
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    _raw("mnist1d")
    assert np.random.random() == expected_np and random.random() == expected_py
    assert list(tmp_path.iterdir()) == []


def test_config_accepts_mnist1d() -> None:
    assert RunConfig.load(None, {"dataset": "mnist1d"}).dataset == "mnist1d"
    with pytest.raises(ConfigError, match="mnist1d"):  # the message lists it as accepted
        RunConfig.load(None, {"dataset": "mnist2d"})


def test_short_federation_learns(tmp_path: Path) -> None:
    cfg = RunConfig.load(None, {
        "dataset": "mnist1d", "sites": 5, "rounds": 8, "task_options": {"partition": "iid"}, "lr": 0.5,
        "local_epochs": 3, "seed": 0, "lineage": False, "out": str(tmp_path), "run_id": "m1d",
    })
    run = run_federation(cfg, engine="inprocess")
    accs = [r.test_accuracy for r in run.rounds]
    assert len(accs) == 8
    # chance is 0.10; an MLP trained centrally peaks near 0.60 on MNIST-1D
    assert accs[-1] >= 0.50, accs  # measured 0.586
    assert accs[-1] > accs[0]

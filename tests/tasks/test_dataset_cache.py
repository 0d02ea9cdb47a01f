"""The dataset cache: a fresh process reads the split it would build, bit for bit, without
importing scikit-learn; an unreadable entry is rebuilt; an empty FEDSILO_CACHE_DIR turns
it off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsilo.tasks import datasets

PROBE = """
import sys
from fedsilo.tasks.datasets import load_dataset
d = load_dataset("wine", seed=3)
print(d.x_train.shape[0], d.num_classes, "sklearn" in sys.modules)
"""


def _probe(cache: str) -> list[str]:
    env = {**os.environ, datasets.CACHE_ENV: cache}
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def _built(name: str, seed: int) -> datasets.Dataset:
    return datasets._split(name, 0.2, seed)


def test_a_fresh_process_reads_the_split_without_sklearn(tmp_path: Path) -> None:
    assert _probe(str(tmp_path)) == ["142", "3", "True"]  # built: sklearn imported
    [entry] = tmp_path.iterdir()
    assert entry.name.startswith("wine-test0.2-seed3-src") and entry.suffix == ".npz"
    assert _probe(str(tmp_path)) == ["142", "3", "False"]  # read back: no sklearn
    cached, built = datasets._read_cached("wine", entry), _built("wine", 3)
    assert cached is not None and cached.num_classes == built.num_classes == 3
    for key in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(cached, key), getattr(built, key)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert not got.flags.writeable


def test_an_unreadable_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path))
    path = datasets._cache_path("wine", 0.2, 4)
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an npz")
    datasets.load_dataset.cache_clear()
    try:
        got = datasets.load_dataset("wine", seed=4)
    finally:
        datasets.load_dataset.cache_clear()
    assert np.array_equal(got.x_train, _built("wine", 4).x_train)
    assert datasets._read_cached("wine", path) is not None  # rewritten whole


def test_an_empty_setting_turns_the_cache_off(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(datasets.CACHE_ENV, "")
    assert datasets.cache_dir() is None and datasets._cache_path("wine", 0.2, 0) is None
    monkeypatch.delenv(datasets.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / "fedsilo" / "datasets"


def test_an_unknown_dataset_is_named() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'iris'; expected one of digits, "
                                         "breast_cancer, wine, mnist1d"):
        datasets.load_dataset("iris")

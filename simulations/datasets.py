"""Compatibility: the bundled datasets moved to `fedsilo.tasks.datasets`."""

from fedsilo.tasks.datasets import DATASETS, MNIST1D_SEED, Dataset, _raw, load_dataset

__all__ = ["DATASETS", "MNIST1D_SEED", "Dataset", "_raw", "load_dataset"]

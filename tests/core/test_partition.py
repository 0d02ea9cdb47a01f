import numpy as np
import pytest

from fedsilo.simulations.datasets import load_dataset
from fedsilo.simulations.partition import PartitionError, PartitionSpec, partition


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:0.1", "shards:2"])
def test_partition_covers_every_sample_once_and_is_seeded(spec: str) -> None:
    y = load_dataset("digits").y_train
    parts = partition(y, 10, PartitionSpec.parse(spec), seed=3)
    assert len(parts) == 10
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))
    assert min(len(p) for p in parts) >= 1
    again = partition(y, 10, PartitionSpec.parse(spec), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(y, 10, PartitionSpec.parse(spec), seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_skews_labels_more_with_smaller_alpha() -> None:
    y = load_dataset("digits").y_train

    def mean_entropy(alpha: float) -> float:
        ents = []
        for p in partition(y, 10, PartitionSpec("dirichlet", alpha), seed=0):
            q = np.bincount(y[p], minlength=10) / len(p)
            q = q[q > 0]
            ents.append(-(q * np.log(q)).sum())
        return float(np.mean(ents))

    assert mean_entropy(0.1) < mean_entropy(0.5) < mean_entropy(100.0)


def test_shards_give_each_site_few_labels() -> None:
    y = load_dataset("digits").y_train
    parts = partition(y, 10, PartitionSpec.parse("shards:2"), seed=0)
    assert max(len(np.unique(y[p])) for p in parts) <= 4


@pytest.mark.parametrize(
    "text", ["", "iid:3", "dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:abc", "shards:0", "shards:1.5", "zipf:2"]
)
def test_malformed_specs_are_rejected(text: str) -> None:
    with pytest.raises(PartitionError, match="accepted: iid, dirichlet:ALPHA"):
        PartitionSpec.parse(text)


def test_more_sites_than_samples_is_rejected() -> None:
    y = load_dataset("wine").y_train
    with pytest.raises(PartitionError, match=f"exceeds the {len(y)} training samples"):
        partition(y, len(y) + 1, PartitionSpec.parse("iid"), seed=0)

"""Every kernel Flower 1.42 also has, checked against Flower on the same vectors.

Flower averages models while fedsilo averages deltas: both are fed the same vectors
(Flower's as per-layer arrays in reply Messages, ours as one flat row each).
"""

from __future__ import annotations

import numpy as np
import pytest
from data import DIM, LAYERS, random_batch, split_layers
from flwr.server.strategy import aggregate as legacy
from flwr.serverapp.strategy import Bulyan as FlBulyan
from flwr.serverapp.strategy import FedAvg as FlFedAvg
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg
from flwr.serverapp.strategy import Krum as FlKrum
from flwr.serverapp.strategy import MultiKrum as FlMultiKrum
from helpers.messages import flower_reply

from fedsilo.strategies import make_aggregator
from fedsilo.strategies.batch import UpdateBatch


@pytest.fixture(autouse=True)
def _no_forced_gc_in_flower_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` (its Bulyan calls it for
    every reply) forces a full ``gc.collect()`` per record to free memory early. Late in a
    whole-suite run this process holds hundreds of thousands of objects and each collection
    took 1-2 s: 125 s for the five Bulyan cases. Skipping the collections changes no value
    Flower computes, only when unreachable memory is freed."""
    import types

    from flwr.app.message import arrayrecord

    monkeypatch.setattr(arrayrecord, "gc", types.SimpleNamespace(collect=lambda *a: 0))


def flower_replies(batch: UpdateBatch) -> list:
    return [
        flower_reply(split_layers(row), int(w), node)
        for node, (row, w) in enumerate(zip(batch.updates, batch.weights, strict=True), 1)
    ]


def flat(record) -> np.ndarray:
    return np.concatenate([record[k].numpy().reshape(-1) for k in LAYERS])


def legacy_results(batch: UpdateBatch) -> list:
    return [(list(split_layers(r).values()), int(w)) for r, w in zip(batch.updates, batch.weights, strict=True)]


def legacy_flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a).reshape(-1) for a in arrays])


@pytest.mark.parametrize("n", [1, 2, 7, 12])
def test_mean_matches_fedavg_aggregate_train(n: int) -> None:
    batch = random_batch(n, seed=n)
    arrays, _ = FlFedAvg().aggregate_train(1, flower_replies(batch))
    ours = make_aggregator("mean").aggregate(batch).update
    np.testing.assert_allclose(ours, flat(arrays), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ours, legacy_flat(legacy.aggregate(legacy_results(batch))), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("n", [1, 2, 7, 12])
def test_median_matches_fedmedian_exactly(n: int) -> None:
    batch = random_batch(n, seed=10 + n)
    arrays, _ = FedMedian().aggregate_train(1, flower_replies(batch))
    ours = make_aggregator("median").aggregate(batch).update
    np.testing.assert_array_equal(ours, flat(arrays))
    np.testing.assert_array_equal(ours, legacy_flat(legacy.aggregate_median(legacy_results(batch))))


@pytest.mark.parametrize(("n", "beta"), [(5, 0.0), (10, 0.2), (11, 0.3), (20, 0.45)])
def test_trimmed_mean_matches_fedtrimmedavg(n: int, beta: float) -> None:
    batch = random_batch(n, seed=20 + n)
    arrays, _ = FedTrimmedAvg(beta=beta).aggregate_train(1, flower_replies(batch))
    ours = make_aggregator(f"trimmed_mean:beta={beta}").aggregate(batch).update
    np.testing.assert_allclose(ours, flat(arrays), rtol=1e-5, atol=1e-6)
    ref = legacy_flat(legacy.aggregate_trimmed_avg(legacy_results(batch), beta))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("n", "f"), [(5, 1), (9, 2), (13, 5)])
def test_krum_matches_flower(n: int, f: int) -> None:
    batch = random_batch(n, seed=30 + n)
    arrays, _ = FlKrum(num_malicious_nodes=f).aggregate_train(1, flower_replies(batch))
    result = make_aggregator(f"krum:f={f}").aggregate(batch)
    np.testing.assert_array_equal(result.update, flat(arrays))
    legacy_pick = legacy_flat(legacy.aggregate_krum(legacy_results(batch), f, 0))
    np.testing.assert_array_equal(result.update, legacy_pick)
    (chosen,) = result.info["selected"]
    assert result.fates == ["accepted" if i == chosen else "rejected:krum" for i in range(n)]


@pytest.mark.parametrize(("n", "f", "m"), [(7, 1, 3), (12, 3, 5), (12, 3, 9)])
def test_multi_krum_matches_flower(n: int, f: int, m: int) -> None:
    batch = random_batch(n, seed=40 + m)
    fl = FlMultiKrum(num_malicious_nodes=f, num_nodes_to_select=m)
    arrays, _ = fl.aggregate_train(1, flower_replies(batch))
    result = make_aggregator(f"multi_krum:f={f},m={m}").aggregate(batch)
    np.testing.assert_allclose(result.update, flat(arrays), rtol=1e-5, atol=1e-6)
    ref = legacy_flat(legacy.aggregate_krum(legacy_results(batch), f, m))
    np.testing.assert_allclose(result.update, ref, rtol=1e-5, atol=1e-6)
    assert result.fates.count("accepted") == m


@pytest.mark.parametrize(("n", "f"), [(7, 1), (10, 1), (11, 2), (14, 2), (15, 3)])  # odd/even theta
def test_bulyan_multikrum_selection_matches_flower_message_api(n: int, f: int) -> None:
    batch = random_batch(n, seed=50 + n)
    arrays, _ = FlBulyan(num_malicious_nodes=f).aggregate_train(1, flower_replies(batch))
    result = make_aggregator(f"bulyan:f={f},selection=multikrum").aggregate(batch)
    np.testing.assert_allclose(result.update, flat(arrays), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("n", "f"), [(7, 1), (10, 1), (11, 2), (14, 2), (15, 3)])
def test_bulyan_iterative_selection_matches_flower_legacy(n: int, f: int) -> None:
    batch = random_batch(n, seed=60 + n)
    ref = legacy_flat(legacy.aggregate_bulyan(legacy_results(batch), f, legacy.aggregate_krum, to_keep=0))
    result = make_aggregator(f"bulyan:f={f}").aggregate(batch)
    np.testing.assert_allclose(result.update, ref, rtol=1e-5, atol=1e-6)
    assert result.fates.count("rejected:bulyan") == 2 * f


def test_flower_bulyan_refuses_what_we_refuse() -> None:
    batch = random_batch(6, seed=1)
    with pytest.raises(ValueError, match="4f\\+3 = 7"):
        make_aggregator("bulyan:f=1").aggregate(batch)
    arrays, _ = FlBulyan(num_malicious_nodes=1).aggregate_train(1, flower_replies(batch))
    assert arrays is None


def test_dim_of_test_layers() -> None:
    assert DIM == 12 + 3 + 20 + 5

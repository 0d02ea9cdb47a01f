"""The whole SecAgg+ protocol in memory: correctness, weights, dropouts at every stage."""

import numpy as np
import pytest

from fedsilo.privacy.secagg import STAGES, SecAggConfig

from .helpers import assert_exact_sum, make_inputs
from .memory_driver import run_round

CFG = SecAggConfig(clip_range=1.0, bits=20, max_weight=10.0)


def test_no_dropout_recovers_weighted_sum() -> None:
    inputs = make_inputs(10, 500)
    rep = run_round(inputs, CFG)
    assert_exact_sum(rep, inputs)
    assert rep.result is not None and rep.result.participants == sorted(inputs)
    assert rep.result.recovered == []
    assert rep.server is not None and (rep.server.k, rep.server.t) == (8, 5)


def test_weighted_mean_matches_fedavg() -> None:
    inputs = make_inputs(6, 100, seed=3)
    rep = run_round(inputs, CFG)
    assert rep.result is not None
    mean = rep.result.sum_delta / rep.result.total_weight
    w = np.array([v[1] for v in inputs.values()])
    x = np.stack([v[0] for v in inputs.values()]).astype(np.float64)
    expect = (w[:, None] * x).sum(0) / w.sum()
    assert np.max(np.abs(mean - expect)) < 2 * rep.result.bound / w.sum()


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("frac", [0.0, 0.1, 0.3])
def test_dropouts_at_each_stage(stage: str, frac: float) -> None:
    inputs = make_inputs(10, 300, seed=1)
    ids = sorted(inputs)
    gone = ids[1 : 1 + round(frac * len(ids))]
    rep = run_round(inputs, CFG, drop={stage: gone})
    assert_exact_sum(rep, inputs)
    assert rep.dropped[stage] == gone
    res = rep.result
    assert res is not None
    if stage in ("setup", "share"):  # never contributed a mask: simply not in the sum
        assert res.participants == [i for i in ids if i not in gone] and res.recovered == []
    elif stage == "masked":  # masks of the dropped sites removed through their key shares
        assert res.participants == [i for i in ids if i not in gone] and res.recovered == gone
    else:  # dropped after sending the masked input: still in the sum
        assert res.participants == ids and res.recovered == []


def test_sparse_graph_with_dropouts_at_30_percent_in_every_stage() -> None:
    inputs = make_inputs(40, 200, seed=2)
    ids = sorted(inputs)
    cfg = SecAggConfig(degree=20, max_weight=10.0)
    drop = {"setup": ids[0:3], "share": ids[10:13], "masked": ids[20:26], "unmask": ids[30:33]}
    rep = run_round(inputs, cfg, drop=drop)
    assert_exact_sum(rep, inputs)
    assert rep.server is not None and rep.server.k == 20
    assert rep.result is not None and rep.result.recovered == ids[20:26]


@pytest.mark.parametrize("stage", STAGES)
def test_below_threshold_fails_cleanly(stage: str) -> None:
    inputs = make_inputs(10, 50)
    ids = sorted(inputs)
    rep = run_round(inputs, CFG, drop={stage: ids[:6]})
    assert not rep.ok and rep.result is None
    assert rep.reason is not None and rep.reason.startswith(f"secagg {stage}")
    assert "threshold" in rep.reason or "need 5" in rep.reason


def test_degree_n_minus_1_is_original_secagg() -> None:
    inputs = make_inputs(8, 64)
    rep = run_round(inputs, SecAggConfig(degree=100, max_weight=10.0),
                    drop={"masked": sorted(inputs)[:3]})
    assert_exact_sum(rep, inputs)
    assert rep.server is not None and rep.server.k == 7
    assert all(len(v) == 7 for v in rep.server.graph.values())


def test_clipping_is_applied_to_the_weighted_update() -> None:
    inputs = {1: (np.array([0.5, -0.5], np.float32), 4.0), 2: (np.zeros(2, np.float32), 4.0)}
    rep = run_round(inputs, SecAggConfig(clip_range=0.1, max_weight=4.0))
    assert rep.result is not None  # site 1 sends clip(4/4 * 0.5) = 0.1, times W = 0.4
    assert np.allclose(rep.result.sum_delta, [0.4, -0.4], atol=rep.result.bound)


def test_too_many_sites_for_bits_is_refused_before_the_round() -> None:
    inputs = make_inputs(5, 4)
    with pytest.raises(ValueError, match="wraps the 2\\^32 ring"):
        run_round(inputs, SecAggConfig(bits=31))

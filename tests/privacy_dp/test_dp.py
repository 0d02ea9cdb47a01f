"""Client-level DP mechanism: clipping, sensitivity, noise, adaptive clipping, budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedsilo.privacy.dp import (
    COMPOSES_WITH,
    ClientLevelDP,
    DPConfig,
    check_composition,
    check_secure_aggregation,
    clip_update,
    site_contribution,
    update_norm,
)


def _dp(
    rounds: int = 10, m: int = 5, population: int = 50, seed: int = 0, **cfg: object
) -> ClientLevelDP:
    base: dict[str, object] = dict(noise_multiplier=1.3, clip_norm=1.0, secure_noise=False)
    return ClientLevelDP(
        DPConfig(**{**base, **cfg}),  # type: ignore[arg-type]
        rounds=rounds,
        sample_rate=m / population,
        population=population,
        expected_clients=m,
        seed=seed,
    )


def _updates(n: int, d: int, scale: float = 0.1, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list((rng.standard_normal((n, d)) * scale / math.sqrt(d)).astype(np.float32))


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_noise_std_on_aggregate_matches_formula(clipping: str) -> None:
    d, m, c, z = 1_000_000, 5, 2.0, 1.3
    dp = _dp(m=m, clip_norm=c, clipping=clipping, clipped_count_stddev=2.0)
    out = dp.aggregate([np.zeros(d, np.float32)] * m, np.ones(m)).update
    z_u = z if clipping == "fixed" else (z**-2 - (2 * 2.0) ** -2) ** -0.5
    assert dp.update_noise_multiplier == pytest.approx(z_u, rel=1e-12)
    expected = z_u * c / m
    tol = 5 * math.sqrt(1 / (2 * d))  # 5 standard errors of a sample std (chi-square)
    assert abs(out.std(dtype=np.float64) / expected - 1) < tol
    assert abs(out.mean(dtype=np.float64)) < 5 * expected / math.sqrt(d)


def test_secure_noise_on_aggregate_matches_formula() -> None:
    d, m = 500_000, 4
    dp = _dp(m=m, clip_norm=0.5, secure_noise=True)
    out = dp.aggregate([np.zeros(d, np.float32)] * m, np.ones(m))
    expected = 1.3 * 0.5 / m
    assert abs(out.update.std(dtype=np.float64) / expected - 1) < 5 * math.sqrt(1 / (2 * d))
    assert out.lineage["noise_generator"] == "chacha20-os.urandom/box-muller"


def test_huge_update_moves_pre_noise_aggregate_by_at_most_its_clipped_share() -> None:
    d, m, c = 10_000, 10, 1.0
    honest = _updates(m - 1, d)
    huge = np.full(d, 1e6, np.float32)
    with_attacker = _dp(m=m, clip_norm=c, seed=5).aggregate([*honest, huge], np.ones(m))
    without = _dp(m=m, clip_norm=c, seed=5).aggregate(honest, np.ones(m - 1))
    diff = with_attacker.update.astype(np.float64) - without.update  # same seed: noise cancels
    assert np.linalg.norm(diff) <= c / m * (1 + 1e-5)
    assert np.linalg.norm(diff) == pytest.approx(c / m, rel=1e-4)
    assert with_attacker.fates[m - 1] == "clipped"
    assert with_attacker.fates[0] == "accepted"


def test_stacked_and_list_inputs_give_the_same_update() -> None:
    ups = _updates(6, 1000, scale=3.0)
    a = _dp(m=6, seed=2).aggregate(ups, np.ones(6))
    b = _dp(m=6, seed=2).aggregate(np.stack(ups), np.ones(6))
    np.testing.assert_allclose(a.update, b.update, rtol=0, atol=1e-6)
    assert a.fates == b.fates


def test_capped_weights_scale_contributions() -> None:
    d = 100
    ups = [np.full(d, 0.01, np.float32), np.full(d, 0.02, np.float32)]
    kw: dict[str, object] = dict(m=2, seed=9, weighting="capped", weight_cap=100.0)
    noised = _dp(**kw).aggregate(ups, np.array([50.0, 400.0])).update  # type: ignore[arg-type]
    zero = _dp(**kw).aggregate([np.zeros(d, np.float32)] * 2, np.ones(2)).update  # type: ignore[arg-type]
    np.testing.assert_allclose(noised - zero, (0.5 * 0.01 + 1.0 * 0.02) / 2, rtol=1e-4)


def test_site_clipping_is_verified_and_overlong_update_rejected() -> None:
    d, c = 1000, 1.0
    raw = _updates(3, d, scale=5.0)
    clipped = [clip_update(u, c)[0] for u in raw]
    assert all(np.linalg.norm(u.astype(np.float64)) <= c for u in clipped)
    cheat = raw[0] * np.float32(1.01 / np.linalg.norm(raw[0]))
    res = _dp(m=4, where="site").aggregate([*clipped, cheat], np.ones(4))
    assert res.fates == {0: "accepted", 1: "accepted", 2: "accepted", 3: "rejected"}
    assert res.reasons[3].startswith("update norm 1.01 exceeds clip_norm 1")
    assert res.lineage["sites_rejected"] == 1


def test_clip_update_reports_norm_and_leaves_small_updates() -> None:
    small = np.array([0.3, 0.4], np.float32)
    out, norm, was = clip_update(small, 1.0)
    assert (out == small).all() and out is not small and norm == pytest.approx(0.5) and not was
    out, norm, was = clip_update(np.array([3.0, 4.0], np.float32), 1.0)
    assert was and norm == pytest.approx(5.0) and np.linalg.norm(out) <= 1.0
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)


def test_secure_sum_path_equals_server_path() -> None:
    d, m = 500, 4
    raw = _updates(m, d, scale=2.0)
    dp = _dp(m=m, where="site", clipping="adaptive", clipped_count_stddev=2.0, seed=4)
    cfg = dp.round_config(1)
    parts = [site_contribution(u, cfg) for u in raw]
    summed = np.sum([p[0] for p in parts], axis=0, dtype=np.float32)
    bits = sum(p[1] for p in parts)
    a = dp.sum_noise(summed, m, unclipped_count=bits)
    b = _dp(m=m, where="site", clipping="adaptive", clipped_count_stddev=2.0, seed=4).aggregate(
        [p[0] for p in parts], np.ones(m), unclipped=np.array([p[1] for p in parts])
    )
    np.testing.assert_allclose(a.update, b.update, atol=1e-6)
    assert a.lineage["next_clip_norm"] == pytest.approx(b.lineage["next_clip_norm"])
    with pytest.raises(ValueError, match=r"^unclipped_count: adaptive clipping needs"):
        dp.sum_noise(summed, m)


def test_adaptive_clip_norm_moves_toward_target_quantile() -> None:
    m, d = 100, 50
    kw: dict[str, object] = dict(
        m=m,
        population=1000,
        noise_multiplier=0.5,
        clipping="adaptive",
        clipped_count_stddev=1.0,
        clip_lr=0.2,
        target_quantile=0.5,
    )
    tiny = _updates(m, d, scale=1e-3)
    dp = _dp(**kw)  # type: ignore[arg-type]
    dp.aggregate(tiny, np.ones(m))
    # all unclipped: fraction ~1 (noise std 1/m = 0.01) -> C * exp(-0.2 * 0.5)
    assert dp.clip_norm == pytest.approx(math.exp(-0.1), abs=0.2 * 0.05)
    big = _updates(m, d, scale=1e3)
    dp = _dp(**kw)  # type: ignore[arg-type]
    dp.aggregate(big, np.ones(m))
    assert dp.clip_norm == pytest.approx(math.exp(0.1), abs=0.2 * 0.05)


def test_adaptive_needs_enough_count_noise() -> None:
    with pytest.raises(
        ValueError, match=r"^clipped_count_stddev: 0.5 must exceed noise_multiplier/2"
    ):
        _dp(noise_multiplier=1.3, clipping="adaptive", clipped_count_stddev=0.5)


def test_budget_stops_before_it_would_be_exceeded() -> None:
    dp = _dp(epsilon=4.0, noise_multiplier=2.0, m=5, population=50)
    d = 10
    ran = 0
    while (decision := dp.check_budget()).ok:
        dp.aggregate([np.zeros(d, np.float32)], np.ones(1))
        ran += 1
    assert decision.epsilon_spent <= 4.0 < decision.epsilon_if_run
    assert decision.reason.startswith("privacy budget exhausted: next round would reach epsilon=")
    assert dp.accountant.rounds == ran > 1


def test_calibrated_run_lasts_exactly_its_rounds() -> None:
    dp = _dp(rounds=6, epsilon=1.5, noise_multiplier=None, m=5, population=50)
    for _ in range(6):
        assert dp.check_budget().ok
        res = dp.aggregate([np.zeros(4, np.float32)], np.ones(1))
    assert res.lineage["epsilon_cumulative"] <= 1.5
    assert res.lineage["epsilon_cumulative"] == pytest.approx(1.5, rel=1e-3)
    assert not dp.check_budget().ok


def test_noise_multiplier_too_small_for_one_round_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^noise_multiplier: 0.1 spends epsilon=.* in a single round"
    ):
        _dp(epsilon=1.0, noise_multiplier=0.1)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(epsilon=0.0), r"^epsilon: expected a finite number > 0, got 0.0$"),
        (dict(delta=0.0), r"^delta: expected a number strictly between 0 and 1, got 0.0$"),
        (dict(delta=1.0), r"^delta: expected a number strictly between 0 and 1, got 1.0$"),
        (dict(noise_multiplier=None), r"^epsilon: set a budget \(epsilon\) or a noise_multiplier"),
        (dict(clip_norm=-1.0), r"^clip_norm: expected a finite number > 0"),
        (dict(clipping="auto"), r"^clipping: expected one of fixed, adaptive, got 'auto'$"),
        (dict(where="client"), r"^where: expected one of server, site"),
        (dict(target_quantile=1.0), r"^target_quantile: expected a number in \(0, 1\)"),
        (dict(weighting="capped"), r"^weight_cap: required when weighting='capped'$"),
    ],
)
def test_bad_config_is_refused_naming_the_field(cfg: dict[str, object], message: str) -> None:
    base: dict[str, object] = dict(noise_multiplier=1.0)
    with pytest.raises(ValueError, match=message):
        DPConfig(**{**base, **cfg}).validate()  # type: ignore[arg-type]


def test_composition_check() -> None:
    assert "mean" in COMPOSES_WITH
    check_composition("mean")
    with pytest.raises(ValueError, match=r"^aggregator: 'median' cannot be combined with client"):
        check_composition("median")


def test_round_config_is_json_without_none_and_lineage_is_complete() -> None:
    dp = _dp(clipping="adaptive", clipped_count_stddev=2.0)
    cfg = dp.round_config(3)
    assert json.loads(json.dumps(cfg)) == cfg
    assert None not in cfg.values()
    assert cfg["accountant"] == "dp_accounting.rdp/poisson" and cfg["accountant_rounds"] == 1
    res = dp.aggregate(_updates(2, 20), np.ones(2))
    for key in (
        "mechanism",
        "clip_norm",
        "noise_multiplier",
        "effective_noise_multiplier",
        "sample_rate",
        "sampling",
        "accountant",
        "epsilon_round",
        "epsilon_cumulative",
        "delta",
        "noise_generator",
    ):
        assert key in res.lineage
    assert res.lineage["epsilon_round"] == res.lineage["epsilon_cumulative"] > 0
    json.dumps(res.lineage)


def test_resumed_run_continues_exactly() -> None:
    kw: dict[str, object] = dict(clipping="adaptive", clipped_count_stddev=2.0, seed=11)
    ups = _updates(3, 200, scale=2.0)
    straight = _dp(**kw)  # type: ignore[arg-type]
    for _ in range(5):
        last = straight.aggregate(ups, np.ones(3))
    first = _dp(**kw)  # type: ignore[arg-type]
    for _ in range(3):
        first.aggregate(ups, np.ones(3))
    resumed = _dp(**kw)  # type: ignore[arg-type]
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for _ in range(2):
        again = resumed.aggregate(ups, np.ones(3))
    assert np.array_equal(again.update, last.update)
    assert again.lineage["epsilon_cumulative"] == last.lineage["epsilon_cumulative"]
    assert resumed.clip_norm == straight.clip_norm


def test_config_from_dict_and_secure_aggregation_check() -> None:
    cfg = DPConfig.from_dict({"epsilon": 3.0, "where": "site"})
    assert cfg.epsilon == 3.0 and cfg.where == "site"
    check_secure_aggregation(cfg)
    with pytest.raises(ValueError, match=r"^dp: unknown option 'eps'; expected one of "):
        DPConfig.from_dict({"eps": 3.0})
    with pytest.raises(ValueError, match=r"^where: secure aggregation hides individual updates"):
        check_secure_aggregation(DPConfig(epsilon=1.0))


def test_round_with_no_accepted_site_still_noises_and_counts() -> None:
    dp = _dp(m=5)
    res = dp.aggregate(np.empty((0, 1000), np.float32), np.ones(0))
    assert res.update.shape == (1000,) and res.fates == {}
    assert res.update.std() > 0 and dp.accountant.rounds == 1
    with pytest.raises(ValueError, match=r"^updates: empty list; pass an empty \(0, d\)"):
        dp.aggregate([], np.ones(0))


def test_update_norm_is_accurate_at_large_d() -> None:
    u = np.random.default_rng(0).standard_normal(3_000_001, dtype=np.float32)
    exact = math.sqrt(float(np.dot(u.astype(np.float64), u.astype(np.float64))))
    assert update_norm(u) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("where", ["server", "site"])
def test_non_finite_update_is_rejected_not_summed(where: str) -> None:
    good = _updates(2, 50)
    bad = np.full(50, np.nan, np.float32)
    res = _dp(m=3, where=where).aggregate([*good, bad], np.ones(3))
    assert res.fates[2] == "rejected"
    assert res.reasons[2] == "update norm is not finite (NaN/Inf values or overflow)"
    assert np.all(np.isfinite(res.update))

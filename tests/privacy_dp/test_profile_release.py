"""Client-level DP for the drift check's profiles (issue 23, point 2): the release, its
accounting with the rounds (server, calibration, a site's own budget), and its state."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedsilo.privacy.accounting import ClientLevelAccountant
from fedsilo.privacy.calibrate import calibrate_noise_multiplier
from fedsilo.privacy.dp import ClientLevelDP, DPConfig
from fedsilo.privacy.profile_release import bound, release
from fedsilo.privacy.site_budget import SiteBudget
from fedsilo.tasks.profile import FEATURES, LABELS, ROWS, frequency_profile, histogram_profile

Z, ZP, Q, DELTA = 1.1, 5.0, 0.1, 1e-5


def _composed(accountant: dp_accounting.PrivacyAccountant, rounds: int,
              round_event: dp_event.DpEvent, *releases: float) -> float:
    accountant.compose(dp_event.ComposedDpEvent([
        dp_event.SelfComposedDpEvent(round_event, rounds),
        *(dp_event.GaussianDpEvent(r) for r in releases)]))
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_a_release_is_composed_with_the_rounds_as_dp_accounting_composes_it(method: str):
    acct = ClientLevelAccountant(noise_multiplier=Z, sample_rate=Q, delta=DELTA, method=method)
    acct.step(7)
    without = acct.get_epsilon()
    acct.release(ZP)
    fresh = RdpAccountant() if method == "rdp" else PLDAccountant(
        value_discretization_interval=1e-4)
    want = _composed(fresh, 7, dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(Z)), ZP)
    assert acct.get_epsilon() == pytest.approx(want, rel=1e-9)
    assert acct.get_epsilon() > without
    # the release alone, and one round without it (the lineage's epsilon_round)
    assert acct.epsilon_of_rounds(0) == pytest.approx(
        RdpAccountant().compose(dp_event.GaussianDpEvent(ZP)).get_epsilon(DELTA), rel=1e-9) \
        if method == "rdp" else acct.epsilon_of_rounds(0) > 0
    assert acct.epsilon_of_rounds(1, releases=()) < acct.epsilon_of_rounds(1)


def test_under_replace_one_neighbours_the_release_counts_twice_the_sensitivity():
    acct = ClientLevelAccountant(noise_multiplier=Z, sample_rate=Q, delta=DELTA,
                                 sampling="fixed", population=100)
    acct.release(ZP)
    want = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
                         ).compose(dp_event.GaussianDpEvent(ZP / 2)).get_epsilon(DELTA)
    assert acct.get_epsilon() == pytest.approx(want, rel=1e-9)


def test_the_state_keeps_the_releases_and_reads_a_state_without_them():
    acct = ClientLevelAccountant(noise_multiplier=Z, sample_rate=Q, delta=DELTA)
    acct.step(3)
    acct.release(ZP)
    state = json.loads(json.dumps(acct.state_dict()))
    assert state["releases"] == [ZP] and state["version"] == 2
    again = ClientLevelAccountant(noise_multiplier=Z, sample_rate=Q, delta=DELTA)
    again.load_state_dict(state)
    assert again.get_epsilon() == acct.get_epsilon()
    old = {k: v for k, v in state.items() if k != "releases"} | {"version": 1}
    again.load_state_dict(old)  # a checkpoint written before releases existed
    assert again.releases == [] and again.rounds == 3


def test_calibration_leaves_room_for_the_release_in_the_budget():
    alone = calibrate_noise_multiplier(epsilon=4.0, delta=DELTA, rounds=20, sample_rate=Q)
    z = calibrate_noise_multiplier(epsilon=4.0, delta=DELTA, rounds=20, sample_rate=Q,
                                   releases=(ZP,))
    assert z > alone
    acct = ClientLevelAccountant(noise_multiplier=z, sample_rate=Q, delta=DELTA)
    acct.release(ZP)
    assert acct.epsilon_of_rounds(20) <= 4.0 < acct.epsilon_of_rounds(21)
    with pytest.raises(ValueError, match=r"^epsilon: 0\.1 at delta=1e-05 over 20 rounds and the "
                                         r"data profiles' release \(noise multiplier 1\) cannot"):
        calibrate_noise_multiplier(epsilon=0.1, delta=DELTA, rounds=20, sample_rate=Q,
                                   releases=(1.0,))


def test_a_site_counts_the_announced_release_and_refuses_a_change_of_it():
    dp = ClientLevelDP(DPConfig(noise_multiplier=Z, secure_noise=False), rounds=50,
                       sample_rate=Q, population=100, expected_clients=10, seed=0,
                       releases=(ZP,))
    assert "releases" not in dp.round_config(1)  # nothing released yet
    dp.accountant.release(ZP)
    config = dp.round_config(1)
    assert config["releases"] == [ZP]
    site = SiteBudget(max_epsilon=100.0)
    ok, eps, _ = site.admit(config)
    own = ClientLevelAccountant(noise_multiplier=Z, sample_rate=1.0, delta=DELTA)
    own.release(ZP)
    assert ok and eps == pytest.approx(min(own.epsilon_of_rounds(1),
                                           dp.accountant.epsilon_of_rounds(1)))
    site.record_participation(config)
    ok, _, reason = site.admit({**config, "releases": []})
    assert not ok and reason == ("privacy parameter releases changed mid-run: [5.0] -> None; "
                                 "the site cannot account it")
    assert SiteBudget(1.0).admit(config)[2].startswith("site privacy ceiling: participating "
                                                       "would reach epsilon=")


def test_a_frequency_profile_is_within_the_bound_and_release_clips_one_that_is_not():
    rng = np.random.default_rng(0)
    profile = histogram_profile(rng.normal(size=(50, 13)), rng.integers(0, 3, 50), 3)
    freq = frequency_profile(profile)
    np.testing.assert_allclose(freq[FEATURES].sum(1), 1.0)
    np.testing.assert_allclose(freq[LABELS].sum(), 1.0)
    assert freq[ROWS].tolist() == [1.0]
    limit = bound(freq)
    assert limit == math.sqrt(15)
    flat = np.concatenate([np.ravel(v) for v in freq.values()])
    assert np.linalg.norm(flat) <= limit
    inflated = {k: v * 100 for k, v in freq.items()}
    zero = lambda std, size: np.zeros(size)  # noqa: E731 - the sum without noise
    total, variance = release([freq, inflated], None, ZP, zero)
    scaled = limit / np.linalg.norm(flat * 100)
    np.testing.assert_allclose(total[FEATURES], freq[FEATURES] * (1 + 100 * scaled))
    assert variance == pytest.approx((ZP * limit) ** 2)


def test_the_noise_has_the_std_of_the_multiplier_times_the_bound_on_every_entry():
    rng = np.random.default_rng(1)
    freq = frequency_profile(histogram_profile(rng.normal(size=(30, 4)), None, None))
    asked: list[tuple[float, int]] = []

    def normal(std: float, size: int) -> np.ndarray:
        asked.append((std, size))
        return np.full(size, -0.05)

    total, _ = release([freq], None, 2.0, normal)
    assert asked == [(2.0 * math.sqrt(5), 4 * 10 + 1)]  # 4 features x 10 bins, rows
    np.testing.assert_allclose(total[FEATURES], np.maximum(freq[FEATURES] - 0.05, 0.0))

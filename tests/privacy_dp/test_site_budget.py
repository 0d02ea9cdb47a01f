"""A site's own epsilon ceiling, recomputed from the server's round config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsilo.privacy.accounting import ClientLevelAccountant
from fedsilo.privacy.dp import ClientLevelDP, DPConfig
from fedsilo.privacy.site_budget import SiteBudget


def _server(z: float = 1.0, q: float = 0.1) -> ClientLevelDP:
    return ClientLevelDP(
        DPConfig(noise_multiplier=z, secure_noise=False),
        rounds=100,
        sample_rate=q,
        population=100,
        expected_clients=100 * q,
        seed=0,
    )


def _eps(z: float, q: float, rounds: int) -> float:
    return ClientLevelAccountant(noise_multiplier=z, sample_rate=q, delta=1e-5).epsilon_of_rounds(
        rounds
    )


def test_site_recomputes_min_of_amplified_and_own_bound() -> None:
    cfg = {**_server(z=1.0, q=0.1).round_config(1), "accountant_rounds": 50}
    site = SiteBudget(max_epsilon=100.0)
    ok, eps, reason = site.admit(cfg)
    # one participation, unamplified, is cheaper than 50 amplified rounds here
    assert ok and eps == pytest.approx(min(_eps(1.0, 1.0, 1), _eps(1.0, 0.1, 50)))
    assert eps == _eps(1.0, 1.0, 1)
    assert reason.startswith("within site ceiling")
    for _ in range(20):
        site.record_participation(cfg)
    ok, eps, _ = site.admit(cfg)
    assert eps == pytest.approx(_eps(1.0, 0.1, 50))  # now the amplified bound is smaller


def test_site_refuses_round_past_its_ceiling() -> None:
    cfg = _server(z=1.0, q=1.0).round_config(1)
    ceiling = (_eps(1.0, 1.0, 2) + _eps(1.0, 1.0, 3)) / 2
    site = SiteBudget(max_epsilon=ceiling)
    for r in (1, 2):
        cfg = {**cfg, "accountant_rounds": r, "server_round": r}
        assert site.admit(cfg)[0]
        site.record_participation(cfg)
    cfg = {**cfg, "accountant_rounds": 3, "server_round": 3}
    ok, eps, reason = site.admit(cfg)
    assert not ok and eps == pytest.approx(_eps(1.0, 1.0, 3))
    assert reason.startswith(f"site privacy ceiling: participating would reach epsilon={eps:.4g}")


def test_server_and_site_agree_when_site_is_always_sampled() -> None:
    server = _server(z=1.5, q=1.0)
    site = SiteBudget(max_epsilon=50.0)
    for r in range(1, 5):
        cfg = server.round_config(r)
        ok, eps_site, _ = site.admit(cfg)
        server.aggregate([np.zeros(4, np.float32)], np.ones(1))
        site.record_participation(cfg)
        assert ok and eps_site == pytest.approx(server.accountant.get_epsilon())


def test_changed_parameters_are_refused() -> None:
    site = SiteBudget(max_epsilon=10.0)
    cfg = _server(z=1.0).round_config(1)
    site.record_participation(cfg)
    ok, _, reason = site.admit({**cfg, "noise_multiplier": 0.5})
    assert not ok
    assert (
        reason
        == "privacy parameter noise_multiplier changed mid-run: 1.0 -> 0.5; the site cannot account it"
    )


def test_state_survives_restart() -> None:
    cfg = _server().round_config(1)
    site = SiteBudget(max_epsilon=10.0)
    site.record_participation(cfg)
    restored = SiteBudget(max_epsilon=10.0, state=json.loads(json.dumps(site.state_dict())))
    assert restored.admit(cfg) == site.admit(cfg)
    assert restored.participations == 1 and restored.epsilon == site.epsilon > 0


def test_malformed_round_config_and_ceiling() -> None:
    with pytest.raises(ValueError, match=r"^round_config: missing DP parameter\(s\) sample_rate"):
        SiteBudget(1.0).admit(
            {
                "noise_multiplier": 1.0,
                "sampling": "poisson",
                "population": 3,
                "method": "rdp",
                "delta": 1e-5,
                "accountant_rounds": 1,
            }
        )
    with pytest.raises(ValueError, match=r"^max_epsilon: expected a finite number > 0"):
        SiteBudget(0.0)

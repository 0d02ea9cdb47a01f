"""Client-level accountant: cross-checks against independent computations."""

from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant as FlowerRdpAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from fedsilo.privacy.accounting import ClientLevelAccountant

OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))

# (noise multiplier, sample rate, rounds, delta): Poisson settings checked against Opacus.
POISSON_SETTINGS = [
    (1.0, 0.1, 100, 1e-5),
    (1.796, 0.1, 100, 1e-5),
    (0.8, 0.01, 1000, 1e-6),
    (4.0, 1.0, 10, 1e-5),
    (1.2, 0.05, 500, 1e-5),
    (2.5, 0.3, 50, 1e-4),
]


def _ours(z: float, q: float, rounds: int, delta: float, **kw: object) -> float:
    acct = ClientLevelAccountant(noise_multiplier=z, sample_rate=q, delta=delta, **kw)
    acct.step(rounds)
    return acct.get_epsilon()


@pytest.mark.parametrize(("z", "q", "rounds", "delta"), POISSON_SETTINGS)
def test_poisson_rdp_matches_opacus_independent_implementation(
    z: float, q: float, rounds: int, delta: float
) -> None:
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=rounds, orders=OPACUS_ORDERS)
    expected, _ = opacus_rdp.get_privacy_spent(orders=OPACUS_ORDERS, rdp=rdp, delta=delta)
    assert _ours(z, q, rounds, delta) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(
    ("z", "q", "rounds", "delta"), [(1.0, 0.1, 20, 1e-5), (2.0, 0.05, 30, 1e-6)]
)
def test_poisson_pld_matches_dp_accounting_called_directly(
    z: float, q: float, rounds: int, delta: float
) -> None:
    direct = PLDAccountant(value_discretization_interval=1e-4)
    direct.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), rounds)
    ours = _ours(z, q, rounds, delta, method="pld")
    assert ours == pytest.approx(direct.get_epsilon(delta), rel=0.01)
    assert ours <= _ours(z, q, rounds, delta)  # PLD is never looser than RDP


@pytest.mark.parametrize(("z", "population", "m", "rounds"), [(2.0, 50, 10, 20), (3.0, 20, 4, 30)])
def test_fixed_size_sampling_uses_replace_one_with_double_sensitivity(
    z: float, population: int, m: int, rounds: int
) -> None:
    direct = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_event.SampledWithoutReplacementDpEvent(
        population, m, dp_event.GaussianDpEvent(z / 2)
    )
    direct.compose(event, rounds)
    ours = _ours(z, m / population, rounds, 1e-5, sampling="fixed", population=population)
    assert ours == pytest.approx(direct.get_epsilon(1e-5), rel=0.01)


@pytest.mark.parametrize(
    ("sampling", "q", "population", "m"),
    [(SamplingMethod.POISSON, 0.1, 100, 10), (SamplingMethod.NO_AMPLIFICATION, 1.0, 5, 5)],
)
def test_equals_flower_rdp_accountant(
    sampling: SamplingMethod, q: float, population: int, m: int
) -> None:
    flower = FlowerRdpAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=sampling,
        )
    )
    flower.compose(GaussianPrivacyEvent(1.3, m, population), count=40)
    ours = _ours(1.3, q, 40, 1e-5)
    assert ours == pytest.approx(flower.get_epsilon(1e-5), rel=1e-9)


def test_epsilon_if_stepped_does_not_change_state() -> None:
    acct = ClientLevelAccountant(noise_multiplier=1.1, sample_rate=0.1, delta=1e-5)
    acct.step(5)
    before = acct.get_epsilon()
    ahead = acct.epsilon_if_stepped(3)
    assert acct.rounds == 5 and acct.get_epsilon() == before
    acct.step(3)
    assert acct.get_epsilon() == ahead > before


def test_state_round_trips_through_json_and_keeps_counting() -> None:
    kw = dict(noise_multiplier=1.1, sample_rate=0.2, delta=1e-5, sampling="fixed", population=30)
    acct = ClientLevelAccountant(**kw)  # type: ignore[arg-type]
    acct.step(7)
    resumed = ClientLevelAccountant(**kw)  # type: ignore[arg-type]
    resumed.load_state_dict(json.loads(json.dumps(acct.state_dict())))
    assert resumed.rounds == 7 and resumed.get_epsilon() == acct.get_epsilon()
    assert resumed.name == "dp_accounting.rdp/fixed"


def test_load_state_refuses_other_configuration() -> None:
    acct = ClientLevelAccountant(noise_multiplier=1.1, sample_rate=0.2, delta=1e-5)
    other = ClientLevelAccountant(noise_multiplier=1.2, sample_rate=0.2, delta=1e-5)
    with pytest.raises(
        ValueError, match=r"^accountant state: noise_multiplier is 1.1 in the saved"
    ):
        other.load_state_dict(acct.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(noise_multiplier=0.0), r"^noise_multiplier: expected a finite number > 0"),
        (dict(sample_rate=0.0), r"^sample_rate: expected a number in \(0, 1\]"),
        (dict(delta=1.0), r"^delta: expected a number strictly between 0 and 1"),
        (dict(sampling="fixed"), r"^population: required when sampling='fixed'"),
        (dict(sampling="fixed", population=10, method="pld"), r"^method: 'pld' has no fixed-size"),
        (dict(method="moments"), r"^method: expected 'rdp' or 'pld'"),
    ],
)
def test_bad_arguments_name_the_option(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = dict(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    with pytest.raises(ValueError, match=message):
        ClientLevelAccountant(**{**base, **kwargs})  # type: ignore[arg-type]


def test_per_order_non_convergence_warnings_are_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # q=0.1, z=1.0: dp-accounting drops fractional orders 1.1-1.5 and warns for each.
    acct = ClientLevelAccountant(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    acct.step(100)
    with caplog.at_level("WARNING"):
        assert acct.get_epsilon() == pytest.approx(7.9039, abs=1e-4)
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]

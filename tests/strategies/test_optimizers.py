"""Server optimisers against Flower 1.42's FedOpt family and their formulas."""

from __future__ import annotations

import numpy as np
import pytest
from data import LAYERS, split_layers
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdagrad as FlAdagrad
from flwr.serverapp.strategy import FedAdam as FlAdam
from flwr.serverapp.strategy import FedAvgM as FlAvgM
from flwr.serverapp.strategy import FedYogi as FlYogi
from helpers.messages import flower_reply

from fedsilo.strategies import SettingError, make_optimizer

D = int(sum(np.prod(s) for s in LAYERS.values()))


def flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record[k].numpy().reshape(-1) for k in LAYERS])


def record(vec: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in split_layers(vec).items()})


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("fedadam", FlAdam()),
        ("fedadam:eta=0.03,beta_1=0.5,beta_2=0.9,tau=0.01", FlAdam(eta=0.03, beta_1=0.5, beta_2=0.9, tau=0.01)),
        ("fedyogi", FlYogi()),
        ("fedadagrad", FlAdagrad()),
        ("fedavgm:momentum=0.7,lr=0.5", FlAvgM(server_momentum=0.7, server_learning_rate=0.5)),
    ],
)
def test_matches_flower_over_several_rounds(ours: str, theirs) -> None:
    rng = np.random.default_rng(7)
    opt = make_optimizer(ours)
    model_ours = model_flower = rng.standard_normal(D).astype(np.float32)
    for rnd in range(1, 5):
        local = (model_flower + 0.1 * rng.standard_normal(D)).astype(np.float32)
        current = record(model_flower)
        # FedOpt strategies keep numpy dicts, FedAvgM an ArrayRecord (set by configure_train)
        theirs.current_arrays = current if isinstance(theirs, FlAvgM) else {
            k: a.numpy() for k, a in current.items()
        }
        # Flower's FedAdam bias-corrects with server_round + 1; ours with the 1-based step
        server_round = rnd - 1 if ours.startswith("fedadam") else rnd
        arrays, _ = theirs.aggregate_train(server_round, [flower_reply(split_layers(local), 10, 1)])
        model_flower = flat(arrays)
        delta = (local - model_ours).astype(np.float32)
        model_ours = opt.step(model_ours, delta)
        np.testing.assert_allclose(model_ours, model_flower, rtol=1e-4, atol=1e-5)


def test_fedavg_is_model_plus_lr_delta() -> None:
    model, delta = np.arange(4, dtype=np.float32), np.ones(4, np.float32)
    np.testing.assert_array_equal(make_optimizer("fedavg").step(model, delta), [1, 2, 3, 4])
    np.testing.assert_array_equal(make_optimizer("fedavg:lr=0.5").step(model, delta), [0.5, 1.5, 2.5, 3.5])
    assert make_optimizer("fedavg").step(model, delta).dtype == np.float32


def test_fedadam_first_step_formula() -> None:
    opt = make_optimizer("fedadam:eta=0.1,beta_1=0.9,beta_2=0.99,tau=0.001")
    delta = np.array([0.5, -2.0], np.float32)
    out = opt.step(np.zeros(2, np.float32), delta)
    m, v = 0.1 * delta, 0.01 * delta**2
    eta = 0.1 * np.sqrt(1 - 0.99) / (1 - 0.9)
    np.testing.assert_allclose(out, eta * m / (np.sqrt(v) + 0.001), rtol=1e-5)


@pytest.mark.parametrize("spec", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_state_round_trip_resumes_identically(spec: str) -> None:
    rng = np.random.default_rng(1)
    deltas = rng.standard_normal((4, 6)).astype(np.float32)
    a = make_optimizer(spec)
    model = np.zeros(6, np.float32)
    for d in deltas[:2]:
        model = a.step(model, d)
    b = make_optimizer(spec)
    b.load_state_dict(a.state_dict())
    ma, mb = model.copy(), model.copy()
    for d in deltas[2:]:
        ma, mb = a.step(ma, d), b.step(mb, d)
    np.testing.assert_array_equal(ma, mb)


def test_stateless_fedavg_has_empty_state_and_refuses_foreign_state() -> None:
    opt = make_optimizer("fedavg")
    assert opt.state_dict() == {}
    with pytest.raises(SettingError, match="unexpected optimiser state keys \\['m'\\]"):
        opt.load_state_dict({"m": np.zeros(2)})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fedadam:beta_1=1", "fedadam: beta_1 must be in \\[0, 1\\), got 1.0"),
        ("fedyogi:tau=0", "fedyogi: tau must be > 0"),
        ("fedavgm:momentum=1.5", "fedavgm: momentum must be in \\[0, 1\\)"),
        ("fedavg:lr=0", "fedavg: lr must be > 0"),
        ("fedadagrad:beta_2=0.5", "fedadagrad: unknown parameter\\(s\\) beta_2; accepted: eta, beta_1, tau"),
    ],
)
def test_bad_optimizer_parameters(spec: str, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        make_optimizer(spec)


@pytest.mark.parametrize("spec", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_state_dict_is_a_copy_the_next_step_cannot_change(spec: str) -> None:
    # the server checkpoints this state on another thread while the next round steps
    opt = make_optimizer(spec)
    rng = np.random.default_rng(3)
    model = opt.step(np.zeros(D, np.float32), rng.standard_normal(D).astype(np.float32))
    state = opt.state_dict()
    saved = {k: np.array(v, copy=True) for k, v in state.items()}
    opt.step(model, rng.standard_normal(D).astype(np.float32))
    for key, value in state.items():
        assert np.array_equal(value, saved[key]), f"{spec}: state_dict()[{key!r}] changed"

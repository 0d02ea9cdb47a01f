"""Differential privacy benchmark: utility against epsilon, and aggregation throughput.

Parts (``--part``):

* ``throughput``: one private aggregation of ``n`` flat float32 updates of ``d``
  parameters (clip, sum, Gaussian noise, account) with fedsilo's ``ClientLevelDP``,
  against Flower 1.42's DP helpers (``flwr.supercore.differential_privacy``: per-layer
  clip of each update, mean, ``numpy.random`` noise) and against the numpy bandwidth
  floor (one reduction over the stacked ``n x d`` array).
* ``client``: client-level DP-FedAvg on scikit-learn's digits (softmax regression,
  d = 650), many sites, Poisson sampling, a fixed number of rounds; test accuracy for
  each epsilon (noise calibrated so the budget lasts the rounds) and without DP.
* ``record``: record-level DP-SGD (Opacus) at 5 sites, FedAvg across them; each site's
  noise is calibrated once for all its rounds; test accuracy for each epsilon and
  without DP.

Example::

    python benchmarks/bench_dp_utility.py --part all
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
logging.getLogger("absl").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="Secure RNG turned off")

DELTA = 1e-5


# ----------------------------------------------------------------------------- data
def load_digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits (8x8 images, 10 classes), standardised, with a bias column; 80/20 split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    X, y = X[order] / 16.0, y[order]
    cut = int(0.8 * len(X))
    mean, std = X[:cut].mean(0), X[:cut].std(0) + 1e-6
    X = np.hstack([(X - mean) / std, np.ones((len(X), 1))]).astype(np.float32)
    return X[:cut], y[:cut].astype(np.int64), X[cut:], y[cut:].astype(np.int64)


def softmax_grad(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean cross-entropy gradient of a softmax regression with weights (features, 10)."""
    logits = X @ w
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return X.T @ p / len(y)


def accuracy(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(X @ w, 1) == y))


# ----------------------------------------------------------------------------- throughput
def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_throughput(n: int, d: int, layers: int, repeat: int) -> list[str]:
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, clip_inputs_inplace

    from fedsilo.privacy.dp import ClientLevelDP, DPConfig

    rng = np.random.default_rng(0)
    stacked = (rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
    rows = list(stacked)
    splits = np.linspace(0, d, layers + 1).astype(int)

    def make(secure: bool) -> ClientLevelDP:
        cfg = DPConfig(noise_multiplier=1.0, clip_norm=0.5, secure_noise=secure)
        return ClientLevelDP(
            cfg, rounds=10**6, sample_rate=0.1, population=10 * n, expected_clients=n, seed=0
        )

    seeded, secure = make(False), make(True)
    floor_rng = np.random.default_rng(0)
    seeded.accountant.get_epsilon()  # warm the one-round RDP curve (done once per run)
    secure.accountant.get_epsilon()

    def flower() -> None:
        per_client = [
            [r[a:b].copy() for a, b in zip(splits[:-1], splits[1:], strict=True)] for r in rows
        ]
        for layers_of_client in per_client:
            clip_inputs_inplace(layers_of_client, 0.5)
        mean = [np.mean([c[i] for c in per_client], axis=0) for i in range(layers)]
        add_gaussian_noise_inplace(mean, 1.0 * 0.5 / n)

    cases = {
        "numpy floor: stacked.sum(axis=0)": lambda: stacked.sum(axis=0),
        "DP floor: stacked.sum(axis=0) + PCG64 float32 normals(d)": lambda: (
            stacked.sum(axis=0) + floor_rng.standard_normal(d, dtype=np.float32)
        ),
        "fedsilo ClientLevelDP.aggregate (list, seeded noise)": lambda: seeded.aggregate(
            rows, np.ones(n)
        ),
        "fedsilo ClientLevelDP.aggregate (n x d, seeded noise)": lambda: seeded.aggregate(
            stacked, np.ones(n)
        ),
        "fedsilo ClientLevelDP.aggregate (list, CSPRNG noise)": lambda: secure.aggregate(
            rows, np.ones(n)
        ),
        "Flower 1.42 helpers: clip each + mean + numpy noise": flower,
        "noise only: fedsilo CSPRNG normal(d)": lambda: secure.noise.normal(1.0, d),
        "noise only: numpy.random.normal(d) (Flower's source)": lambda: np.random.normal(
            0, 1.0, d
        ).astype(np.float32),
    }
    results = {name: _best(fn, repeat) for name, fn in cases.items()}
    floor = results["numpy floor: stacked.sum(axis=0)"]
    dp_floor = results["DP floor: stacked.sum(axis=0) + PCG64 float32 normals(d)"]
    flower_t = results["Flower 1.42 helpers: clip each + mean + numpy noise"]
    out = [
        f"n = {n} updates x d = {d:,} float32 ({n * d * 4 / 2**20:.0f} MiB read), "
        f"{layers} layers for Flower; best of {repeat}",
        "",
        "| operation | time (ms) | x numpy floor | x DP floor | x Flower |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in results.items():
        out.append(
            f"| {name} | {t * 1e3:.1f} | {t / floor:.2f} | {t / dp_floor:.2f} | {t / flower_t:.2f} |"
        )
    return out


# ----------------------------------------------------------------------------- accounting
def bench_accounting() -> list[str]:
    """fedsilo's epsilon against Flower 1.42's RdpAccountant and Opacus's RDP analysis."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
    from opacus.accountants.analysis import rdp as opacus_rdp

    from fedsilo.privacy.accounting import ClientLevelAccountant

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    out = [
        "| z | q | rounds | fedsilo RDP | Flower RdpAccountant | Opacus RDP | fedsilo PLD "
        "| fedsilo/Flower | fedsilo/Opacus | PLD/RDP |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for z, q, rounds in [
        (1.0, 0.1, 100),
        (1.796, 0.1, 100),
        (0.994, 0.1, 100),
        (4.278, 0.1, 100),
        (1.2, 0.05, 500),
        (2.0, 1.0, 10),
    ]:
        population = 1000
        ours = ClientLevelAccountant(noise_multiplier=z, sample_rate=q, delta=DELTA)
        ours.step(rounds)
        pld = ClientLevelAccountant(noise_multiplier=z, sample_rate=q, delta=DELTA, method="pld")
        pld.step(rounds)
        method = SamplingMethod.POISSON if q < 1 else SamplingMethod.NO_AMPLIFICATION
        flower = RdpAccountant(
            PrivacyConfig(DELTA, population, NeighboringRelation.ADD_OR_REMOVE_ONE, method)
        )
        flower.compose(GaussianPrivacyEvent(z, round(q * population), population), rounds)
        rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=rounds, orders=orders)
        opacus_eps = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)[0]
        e, f, p = ours.get_epsilon(), flower.get_epsilon(DELTA), pld.get_epsilon()
        out.append(
            f"| {z} | {q} | {rounds} | {e:.4f} | {f:.4f} | {opacus_eps:.4f} | {p:.4f} "
            f"| {e / f:.4f} | {e / opacus_eps:.4f} | {p / e:.3f} |"
        )
    return out


# ----------------------------------------------------------------------------- client-level
def run_client_level(
    epsilon: float | None,
    sites: int,
    rate: float,
    rounds: int,
    clip: float,
    seed: int,
    clipping: str = "fixed",
) -> tuple[float, float, float, float]:
    """Return (test accuracy, epsilon spent, noise multiplier, seconds)."""
    from fedsilo.privacy.dp import ClientLevelDP, DPConfig

    t0 = time.perf_counter()
    Xtr, ytr, Xte, yte = load_digits_split(seed)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(Xtr)), sites)
    w = np.zeros((Xtr.shape[1], 10), np.float32)
    rng = np.random.default_rng(seed + 1)
    m = rate * sites
    dp = None
    if epsilon is not None:
        cfg = DPConfig(
            epsilon=epsilon, delta=DELTA, clip_norm=clip, secure_noise=False, clipping=clipping
        )  # type: ignore[arg-type]
        dp = ClientLevelDP(
            cfg, rounds=rounds, sample_rate=rate, population=sites, expected_clients=m, seed=seed
        )
    for _ in range(rounds):
        if dp is not None and not dp.check_budget().ok:
            break
        chosen = np.flatnonzero(rng.random(sites) < rate)  # Poisson sampling
        deltas = []
        for k in chosen:  # each site trains locally (5 full-batch GD steps)
            local = w.copy()
            for _ in range(5):
                local -= 0.5 * softmax_grad(local, Xtr[parts[k]], ytr[parts[k]])
            deltas.append((local - w).ravel().astype(np.float32))
        stacked = np.stack(deltas) if deltas else np.empty((0, w.size), np.float32)
        if dp is None:
            update = stacked.mean(0) if len(deltas) else np.zeros(w.size, np.float32)
        else:
            update = dp.aggregate(stacked, np.ones(len(deltas))).update
        w += update.reshape(w.shape)
    spent = dp.accountant.get_epsilon() if dp is not None else float("inf")
    z = dp.noise_multiplier if dp is not None else 0.0
    return accuracy(w, Xte, yte), spent, z, time.perf_counter() - t0


# ----------------------------------------------------------------------------- record-level
def run_record_level(
    epsilon: float | None, sites: int, rounds: int, batch: int, seed: int
) -> tuple[float, float, float, float]:
    """Return (test accuracy, max site epsilon, noise multiplier, seconds)."""
    import torch

    from fedsilo.privacy.dpsgd import calibrate_dpsgd_noise, train_dp_sgd

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    calibrate_cached = functools.cache(
        lambda **kw: calibrate_dpsgd_noise(**kw)  # same budget, steps and rate at every round
    )
    Xtr, ytr, Xte, yte = load_digits_split(seed)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(Xtr)), sites)
    torch.manual_seed(seed)
    global_model = torch.nn.Linear(Xtr.shape[1], 10, bias=False)
    states: list[dict | None] = [None] * sites
    z = 0.0
    eps_sites = [0.0] * sites
    for r in range(rounds):
        new = []
        for k, idx in enumerate(parts):
            model = torch.nn.Linear(Xtr.shape[1], 10, bias=False)
            model.load_state_dict(global_model.state_dict())
            if epsilon is None:
                opt = torch.optim.SGD(model.parameters(), lr=0.5)
                gen = torch.Generator().manual_seed(seed + r * sites + k)
                X, y = torch.as_tensor(Xtr[idx]), torch.as_tensor(ytr[idx])
                for b in torch.randperm(len(idx), generator=gen).split(batch):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(X[b]), y[b]).backward()
                    opt.step()
            else:
                batches = int(np.ceil(len(idx) / batch))
                z = calibrate_cached(
                    target_epsilon=epsilon,
                    delta=DELTA,
                    sample_rate=1 / batches,
                    steps=rounds * batches,
                )
                out = train_dp_sgd(
                    model,
                    Xtr[idx],
                    ytr[idx],
                    epochs=1,
                    lr=0.5,
                    batch_size=batch,
                    noise_multiplier=z,
                    target_epsilon=epsilon,
                    delta=DELTA,
                    max_grad_norm=1.0,
                    accountant_state=states[k],
                    seed=seed + r * sites + k,
                )
                states[k] = out.accountant_state
                eps_sites[k] = out.epsilon
            new.append(model.weight.detach().clone())
        with torch.no_grad():
            global_model.weight.copy_(torch.stack(new).mean(0))
    w = global_model.weight.detach().numpy().T
    spent = max(eps_sites) if epsilon is not None else float("inf")
    return accuracy(w, Xte, yte), spent, z, time.perf_counter() - t0


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--part", choices=["accounting", "throughput", "client", "record", "all"], default="all"
    )
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--seeds", default="0,1,2", help="client/record parts: seeds averaged")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clip", type=float, default=0.1, help="(initial) client clip norm")
    parser.add_argument("--clipping", choices=["fixed", "adaptive"], default="fixed")
    parser.add_argument("--record-rounds", type=int, default=10)
    parser.add_argument("--record-batch", type=int, default=32)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--d", type=int, default=2_000_000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    epsilons: list[float | None] = [float(e) for e in args.epsilons.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    if args.part in ("accounting", "all"):
        print(f"\n### Accounting cross-check (delta {DELTA:g}, Poisson sampling)\n")
        print("\n".join(bench_accounting()))
    if args.part in ("throughput", "all"):
        print("\n### Private aggregation throughput\n")
        print("\n".join(bench_throughput(args.n, args.d, args.layers, args.repeat)))
    for part in ("client", "record"):
        if args.part not in (part, "all"):
            continue
        if part == "client":
            print(
                f"\n### Client-level DP-FedAvg: digits, {args.sites} sites, q={args.rate}, "
                f"{args.rounds} rounds, {args.clipping} clip {args.clip}, delta {DELTA:g}\n"
            )
        else:
            print(
                f"\n### Record-level DP-SGD (Opacus): digits, 5 sites, {args.record_rounds} "
                f"rounds x 1 local epoch, batch {args.record_batch}, clip 1.0, delta {DELTA:g}\n"
            )
        print(
            "| epsilon target | noise multiplier | epsilon spent | test accuracy (mean +- sd) "
            "| seconds / run |"
        )
        print("|---|---:|---:|---:|---:|")
        for eps in [None, *epsilons]:
            runs = [
                run_client_level(
                    eps, args.sites, args.rate, args.rounds, args.clip, s, args.clipping
                )
                if part == "client"
                else run_record_level(eps, 5, args.record_rounds, args.record_batch, s)
                for s in seeds
            ]
            acc = np.array([r[0] for r in runs])
            label = "non-private" if eps is None else f"{eps:g}"
            spent = "-" if eps is None else f"{max(r[1] for r in runs):.3f}"
            z = "-" if eps is None else f"{runs[0][2]:.3f}"
            secs = np.mean([r[3] for r in runs])
            print(
                f"| {label} | {z} | {spent} | {acc.mean():.3f} +- {acc.std():.3f} | {secs:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

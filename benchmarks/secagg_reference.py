"""The references `bench_secagg_rounds.py` sets fedsilo's SecAgg+ round beside.

`crypto_floor`: the cryptography one SecAgg+ round cannot do without, per site and at the
server; `message_floor`: Flower's own cost of one empty exchange per site on the
in-process grid; `flower_legacy_round`: Flower 1.42's own SecAgg+ (its legacy workflow
and client mod) on the same grid, at the same n, d, share holders and threshold.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity
from secagg_common import best  # sibling module (benchmarks/ is on the path)

import fedsilo.privacy.secagg.crypto as secagg_crypto
import fedsilo.privacy.secagg.shamir as secagg_shamir
from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.simulations.inprocess import InProcessGrid

D = 112_510  # parameters of the benchmark's MLP (digits, hidden 1500)


def crypto_floor(n: int, d: int = D, reps: int = 7) -> tuple[int, float, float]:
    """(degree k, site seconds, server seconds): the crypto one round cannot do without.

    Per site, with the same functions the protocol calls: two X25519 key pairs, 2k
    agreements + HKDF (channel and mask key with each of k neighbours), two Shamir splits
    over k + 1 holders, k share encryptions and k decryptions, and k + 2 keystreams of
    d + 2 words (rounding noise, self mask, k pairwise masks) added into the vector. Per
    round at the server: summing n masked vectors and removing n self masks. Nothing
    else (no message, record, state or check) is counted, so any implementation of the
    protocol pays at least this.
    """
    k, t = SecAggConfig().resolve_round(n, n)
    peers = [secagg_crypto.X25519PrivateKey.generate().public_key() for _ in range(2 * k)]
    gen = secagg_crypto.MaskGenerator(d + 2)
    y = np.zeros(d + 2, dtype=np.uint32)
    aad = secagg_crypto.share_aad("floor", 1, 1, 2)

    def site() -> None:
        c_key = secagg_crypto.X25519PrivateKey.generate()
        s_key = secagg_crypto.X25519PrivateKey.generate()
        c_key.public_key().public_bytes_raw()
        s_raw = s_key.private_bytes_raw()
        s_key.public_key().public_bytes_raw()
        keys = [secagg_crypto.agree(c_key if i < k else s_key, peers[i], purpose=b"floor",
                                    run_id="floor", server_round=1, node_a=1, node_b=i + 2)
                for i in range(2 * k)]
        seed = os.urandom(32)
        xs = list(range(1, k + 2))
        b_sh, s_sh = secagg_shamir.split_many([seed, s_raw], xs, t)
        cts = secagg_crypto.encrypt_many(keys[:k], [b_sh[i] + s_sh[i] for i in range(k)],
                                         [aad] * k)
        for i in range(k):
            secagg_crypto.decrypt(keys[i], cts[i], aad)
        np.copyto(y, gen.random_words())
        gen.add_masks(y, [seed, *keys[k:]], [False] * (k + 1))

    received = [np.full(d + 2, i, dtype=np.uint32) for i in range(n)]
    seeds = [os.urandom(32) for _ in range(n)]

    def server() -> None:
        total = np.zeros(d + 2, dtype=np.uint32)
        for v in received:
            total += v
        gen.add_masks(total, seeds, [True] * n)

    return k, best(site, reps * 3), best(server, reps)


def message_floor(n: int, reps: int = 7) -> float:
    """Process CPU seconds of one empty request/reply per site on the in-process grid.

    Flower's own cost of one message exchange (Message objects, ClientApp dispatch, no
    content); SecAgg+ needs two exchanges per round after the first (each round's setup
    and share stages ride on the round before it) where plain FedAvg needs one.
    """
    app = ClientApp()

    @app.train()
    def echo(msg: Message, _context: object) -> Message:
        return Message(RecordDict(), reply_to=msg)

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    grid = InProcessGrid(app, n)
    nodes = list(grid.get_node_ids())

    def exchange() -> None:
        msgs = [Message(RecordDict(), dst_node_id=node, message_type="train", group_id="1")
                for node in nodes]
        list(grid.send_and_receive(msgs))

    return best(exchange, reps)


def flower_legacy_round(n: int, rounds: int = 3) -> tuple[int, int, float, float, float]:
    """Flower 1.42's own SecAgg+ on the same in-process grid, at the same n and d.

    The legacy `SecAggPlusWorkflow` (server, inside Flower's `DefaultWorkflow` with its
    FedAvg) and `secaggplus_mod` (site), with fedsilo's default number of share holders
    (``num_shares = k + 1``) and threshold t, 2^20 quantisation levels in a 2^32 ring and
    clipping range 1 (fedsilo's defaults). Each site's ``fit`` returns a fixed update of the
    benchmark MLP's four arrays (d = 112,510) without training, so the site time is
    Flower's protocol alone. Flower's workflow hands one content object to every site's
    message and its client mod consumes it, which a real transport never notices (each
    message is serialised); the grid here gives each site a deep copy, whose time is not
    counted. CPU times are the process's: Flower's Shamir sharing and reconstruction run
    in thread pools (nothing else runs in the process meanwhile).

    Returns (holders, threshold, wall seconds per round, site CPU seconds per site and
    round, server CPU seconds per round), medians over rounds 2..R.
    """
    import copy
    import logging

    from flwr.client import ClientApp as LegacyClientApp
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.supercore.run import Run

    k, t = SecAggConfig().resolve_round(n, n)
    rng = np.random.default_rng(0)
    update = [(rng.standard_normal(shape) * 0.01).astype(np.float32)
              for shape in ((1500, 64), (1500,), (10, 1500), (10,))]
    assert sum(a.size for a in update) == D
    site_cpu, copy_cpu = [0.0], [0.0]
    per_round: list[tuple[float, float, float]] = []

    class Site(NumPyClient):
        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple:
            return update, 14, {}

    legacy_app = LegacyClientApp(client_fn=lambda _context: Site().to_client(),
                                 mods=[secaggplus_mod])

    def site(msg: Message, context: Any) -> Message:
        c0 = time.process_time()
        try:
            return legacy_app(msg, context)
        finally:
            site_cpu[0] += time.process_time() - c0

    class CopyingGrid(InProcessGrid):
        def _deliver(self, msg: Message) -> Message:
            c0 = time.process_time()
            msg = copy.deepcopy(msg)
            copy_cpu[0] += time.process_time() - c0
            return super()._deliver(msg)

    workflow = SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=t,
                                  clipping_range=1.0, quantization_range=1 << 20)
    run_round = workflow.__call__

    def timed_round(grid: Any, context: Any) -> None:
        s0, x0 = site_cpu[0], copy_cpu[0]
        t0, c0 = time.perf_counter(), time.process_time()
        run_round(grid, context)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        sites, copies = site_cpu[0] - s0, copy_cpu[0] - x0
        per_round.append((wall, sites / n, cpu - sites - copies))

    server = ServerApp()

    aggregated: list[int] = []  # sites in each round's secure sum

    class CountingFedAvg(FedAvg):
        def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            mean = parameters_to_ndarrays(out[0]) if out[0] is not None else []
            # every site sent the same update: the secure mean must be that update
            ok = len(mean) == len(update) and all(
                np.allclose(a, b, atol=1e-4) for a, b in zip(mean, update, strict=False))
            aggregated.append(len(results) if ok else -1)
            return out

    @server.main()
    def main(grid: Any, context: Any) -> None:
        strategy = CountingFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                                  min_available_clients=n,
                                  initial_parameters=ndarrays_to_parameters(update))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                               strategy=strategy)
        DefaultWorkflow(fit_workflow=timed_round)(grid, legacy)

    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.WARNING)  # a line per stage and round otherwise
    try:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        grid = CopyingGrid(site, n)  # type: ignore[arg-type]
        grid.set_run(Run.create_empty(1))
        server(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                             run_config={}))
    finally:
        FLOWER_LOGGER.setLevel(level)
    if len(per_round) != rounds or aggregated != [n] * rounds:
        raise RuntimeError(f"Flower's SecAgg+ aggregated {aggregated} sites in {len(per_round)} "
                           f"rounds, expected {n} in each of {rounds}")
    wall, site_s, server_s = (statistics.median(x) for x in zip(*per_round[1:], strict=True))
    return k + 1, t, wall, site_s, server_s

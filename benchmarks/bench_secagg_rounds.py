"""Whole-round cost of SecAgg+ in the real pipeline: `fedsilo simulate` rounds with and without --secagg.

Same federation (digits, iid, an MLP with --hidden 1500, i.e. d = 112,510 parameters,
about 10^5), same seed, every site every round; per-round wall time (rounds 2..R-1:
round 1 has start-up and, under SecAgg+, the first round's share exchange; round R sets
no next round up, which every other SecAgg+ round does) of plain weighted FedAvg and of
SecAgg+ FedAvg on the in-process grid (the project's ServerApp and ClientApp without
Ray, sites run one after another in this process, so the round time is the sum of all
sites' and the server's work). The two federations run interleaved, one round each in
turn (`interleaved`), and every SecAgg+ round is compared with the plain round just
before it. Reports the ratio secagg / plain per n, overall and within each of the shared
host's two speed states (`host_probe`).

It also reports the per-site view, which is what a deployment sees (sites run in
parallel there, so a round lasts about one site's work plus the server's): per site and
round, the CPU time of training alone (`local_delta`), of the plain train handler
(training + update digest + signature + ledger), and of all four SecAgg+ handlers
(training + protocol work + message handling).

It also runs Flower 1.42's own SecAgg+ (the legacy workflow and client mod) on the same
grid at each n, with the same share holders and threshold (`flower_legacy_round`), and
compares its round, per-site and server times with fedsilo's.

With ``--split N`` it also profiles one SecAgg+ run at N sites: the CPU time of each part
of the protocol (exclusive: a part's time excludes the parts it calls), per site and round
for the site side and per round for the server. The wrappers cost a few microseconds per
call, so the split is indicative; the round table above comes from unwrapped runs.

    python benchmarks/bench_secagg_rounds.py [--sites 10 50] [--rounds 12] [--repeats 3] [--split 50]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import fedsilo.client.app as client_app  # noqa: E402
import fedsilo.client.secagg_handler as secagg_handler  # noqa: E402
import fedsilo.client.update as client_update  # noqa: E402
import fedsilo.privacy.secagg.client as secagg_client  # noqa: E402
import fedsilo.privacy.secagg.crypto as secagg_crypto  # noqa: E402
import fedsilo.privacy.secagg.server as secagg_server  # noqa: E402
import fedsilo.privacy.secagg.shamir as secagg_shamir  # noqa: E402
import fedsilo.server.secagg_round as secagg_round  # noqa: E402
import fedsilo.server.secagg_stages as secagg_stages  # noqa: E402
from fedsilo.privacy.secagg import SecAggConfig  # noqa: E402
from fedsilo.server.config import RunConfig  # noqa: E402
from fedsilo.simulations.config import SimulationConfig  # noqa: E402
from fedsilo.simulations.inprocess import InProcessGrid  # noqa: E402
from fedsilo.simulations.runner import run_federation  # noqa: E402

D = 112_510  # parameters of the benchmark's MLP (digits, hidden 1500)

# handler CPU seconds per round-robin worker (thread name) and label, accumulated while
# that worker's `_ON` entry is set (rounds 2..R-1 only)
_CPU: dict[str, dict[str, float]] = {}
_ON: dict[str, bool] = {}
_PROBE_KEY = secagg_crypto.X25519PrivateKey.generate()
_PROBE_PEER = secagg_crypto.X25519PrivateKey.generate().public_key()


@contextmanager
def _timed(module: Any, name: str, label: str) -> Iterator[None]:
    """Accumulate the calling thread's CPU time of ``module.name`` calls under ``label``."""
    orig: Callable[..., Any] = getattr(module, name)

    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0 = time.thread_time()
        try:
            return orig(*args, **kwargs)
        finally:
            worker = threading.current_thread().name
            if _ON.get(worker):
                cpu = _CPU.setdefault(worker, {})
                cpu[label] = cpu.get(label, 0.0) + time.thread_time() - c0

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, orig)


def host_probe(reps: int = 100) -> float:
    """Microseconds per X25519 exchange right now (about 5 ms of work).

    The shared host this runs on switches, for seconds to tens of seconds at a time,
    between a quiet state and a contended one in which every core runs about 1.4x
    slower (38-42 against 53-61 us per exchange). A probe just before and just after a
    round tells which state the round ran in.
    """
    t0 = time.perf_counter()
    for _ in range(reps):
        _PROBE_KEY.exchange(_PROBE_PEER)
    return (time.perf_counter() - t0) / reps * 1e6


@dataclass
class RoundTimes:
    """Rounds 2..R-1 of one run: wall seconds, CPU seconds of the federation's thread, the
    host probe (us) just before and after each, and the handlers' CPU seconds per round
    (label -> seconds)."""

    wall: list[float] = field(default_factory=list)
    thread_cpu: list[float] = field(default_factory=list)
    probes: list[tuple[float, float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


class _Baton:
    """Lets one of several threads run at a time, in turn."""

    def __init__(self, count: int) -> None:
        self._cond = threading.Condition()
        self._turn = 0
        self._live = list(range(count))

    def wait(self, i: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == i)

    def pass_on(self, i: int, *, finished: bool = False) -> None:
        with self._cond:
            pos = self._live.index(i)
            if finished:
                self._live.remove(i)
            if self._live:
                self._turn = self._live[(pos + (0 if finished else 1)) % len(self._live)]
            self._cond.notify_all()


def interleaved(configs: list[RunConfig]) -> list[RoundTimes]:
    """Run the federations side by side, one round at a time each, in turn.

    Each federation runs in its own thread, but only one thread works at a time: after
    each round a federation hands over to the next one and waits for its turn again. So
    round r of every federation runs within a second or so of the others' round r, in
    the same host state, rather than a whole run apart. A round's time is measured from
    the moment its federation got the turn to the end of the round (the waiting is not
    counted); the host probe runs outside that window.
    """
    baton = _Baton(len(configs))
    out = [RoundTimes() for _ in configs]
    errors: list[BaseException] = []

    def worker(i: int, config: RunConfig) -> None:
        name = threading.current_thread().name
        times, ends = out[i], [0]
        baton.wait(i)
        before, start, cpu0 = host_probe(), time.perf_counter(), time.thread_time()

        def on_round(_s: object) -> None:
            nonlocal before, start, cpu0
            wall, cpu = time.perf_counter() - start, time.thread_time() - cpu0
            after = host_probe()
            ends[0] += 1
            if 2 <= ends[0] <= config.rounds - 1:
                times.wall.append(wall)
                times.thread_cpu.append(cpu)
                times.probes.append((before, after))
            _ON[name] = 1 <= ends[0] < config.rounds - 1  # the next round is timed
            baton.pass_on(i)
            baton.wait(i)
            before, start, cpu0 = host_probe(), time.perf_counter(), time.thread_time()

        try:
            run_federation(config, engine="inprocess", on_round=on_round)
        except BaseException as exc:  # reported by the caller once every thread is done
            errors.append(exc)
        finally:
            _ON[name] = False
            baton.pass_on(i, finished=True)

    _CPU.clear()
    threads = [threading.Thread(target=worker, args=(i, c), name=f"fed{i}")
               for i, c in enumerate(configs)]
    with _timed(client_update, "local_delta", "train"), \
            _timed(client_app, "_train_reply", "plain_site"), \
            _timed(secagg_handler, "_handle", "secagg_site"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for i, (times, config) in enumerate(zip(out, configs, strict=True)):
        times.cpu = {k: v / (config.rounds - 2) for k, v in _CPU.get(f"fed{i}", {}).items()}
    return out


def quiet(probes: tuple[float, float], floor: float) -> bool | None:
    """True if both probes of a round saw the quiet host (within 15% of the fastest
    probe of the run), False if both saw the contended one, None if it changed."""
    before, after = (p <= 1.15 * floor for p in probes)
    return before if before == after else None


# (owner, attribute, label); "site: ..." parts are reported per site and round
_SPLIT_PARTS: list[tuple[Any, str, str]] = [
    (client_update, "local_delta", "site: training (local_delta)"),
    (secagg_crypto, "agree", "site: X25519 agreement + HKDF"),
    (secagg_crypto.MaskGenerator, "_keystream", "site: AES-CTR keystreams (masks + rounding noise)"),
    (secagg_crypto.MaskGenerator, "add_masks", "site: mask adds (two keystreams a pass)"),
    (secagg_crypto, "encrypt_many", "site: AES-GCM share encryption / decryption"),
    (secagg_crypto, "decrypt", "site: AES-GCM share encryption / decryption"),
    (secagg_shamir, "split_many", "site: Shamir split"),
    (secagg_client, "quantize", "site: quantisation (one compiled pass)"),
    (secagg_client, "neighbours", "site: own graph neighbours (ring order)"),
    (secagg_client.SecAggClient, "setup", "site: setup rest (2 key pairs, checks)"),
    (secagg_client.SecAggClient, "share", "site: share rest (checks, state, loops)"),
    (secagg_client.SecAggClient, "masked_input", "site: masked rest (checks, share decryption loop)"),
    (secagg_client.SecAggClient, "unmask", "site: unmask rest"),
    (secagg_handler, "_load", "site: state load"),
    (secagg_handler, "_save", "site: state save (JSON)"),
    (secagg_handler, "decode_request", "site: records, decode requests"),
    (secagg_handler, "encode", "site: records, encode replies (incl. masked vector)"),
    (secagg_handler, "_handle", "site: handler rest (Flower glue, fit_update extras)"),
    (secagg_stages, "encode", "server: records, encode requests"),
    (secagg_stages, "decode_reply", "server: records, decode replies"),
    (secagg_round, "exchange", "server: message handling rest (Message objects, grid)"),
    (secagg_round.SecAggSession, "exchange", "server: round driver rest"),
    *[(secagg_server.SecAggServer, m, f"server: {m} (incl. its crypto)")
      for m in ("on_keys", "on_shares", "on_masked", "on_unmask")],
]


def _best(fn: Callable[[], object], reps: int) -> float:
    """Least process CPU seconds of ``reps`` calls (the floor: noise only adds)."""
    best = float("inf")
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


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

    return k, _best(site, reps * 3), _best(server, reps)


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

    return _best(exchange, reps)


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


def split_run(n: int, rounds: int, out: str) -> list[str]:
    """Profile one SecAgg+ run at ``n`` sites; markdown lines of the per-part CPU split."""
    cpu: dict[str, float] = {}
    stack: list[float] = []
    server_depth = [0]
    saved = []
    on = [False]  # rounds 2..R-1

    def wrap(owner: Any, name: str, label: str) -> None:
        orig = getattr(owner, name)
        is_server = label.startswith("server: on_")

        @functools.wraps(orig)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if server_depth[0] and not is_server:  # inside a server step: counted there
                return orig(*args, **kwargs)
            server_depth[0] += is_server
            c0 = time.process_time()
            stack.append(0.0)
            try:
                return orig(*args, **kwargs)
            finally:
                dt = time.process_time() - c0
                child = stack.pop()
                server_depth[0] -= is_server
                if stack:
                    stack[-1] += dt
                if on[0]:
                    cpu[label] = cpu.get(label, 0.0) + dt - child

        saved.append((owner, name, orig))
        setattr(owner, name, wrapper)

    for owner, name, label in _SPLIT_PARTS:
        wrap(owner, name, label)
    stamps: list[float] = []

    def on_round(_s: object) -> None:
        stamps.append(time.perf_counter())
        on[0] = len(stamps) < rounds - 1

    try:
        run_federation(SimulationConfig.load(None, {"sites": n, "rounds": rounds, "partition": "iid",
                                             "hidden": 1500, "out": out, "lineage": True,
                                             "run_id": f"split{n}", "secagg.enabled": True}),
                       engine="inprocess", on_round=on_round)
    finally:
        on[0] = False
        for owner, name, orig in reversed(saved):
            setattr(owner, name, orig)
    r = len(stamps) - 2
    site = sorted(((v, k) for k, v in cpu.items() if k.startswith("site")), reverse=True)
    server = sorted((k, v) for k, v in cpu.items() if k.startswith("server"))
    lines = [
        "", f"### Profile split, n = {n} (`--split {n}`, rounds 2..{rounds - 1}, process CPU, "
        f"wall {(stamps[-2] - stamps[0]) / r:.3f} s/round with the wrappers, "
        f"load average {os.getloadavg()[0]:.1f})", "",
        "Exclusive times: a part excludes the parts listed here that it calls. Crypto "
        "called inside a server step is counted in that step.", "",
        "| part | ms per site and round |", "|---|---|",
    ]
    lines += [f"| {k[6:]} | {v / r / n * 1e3:.3f} |" for v, k in site]
    lines += [f"| **all site parts** | **{sum(v for v, _ in site) / r / n * 1e3:.3f}** |", "",
              "| server part | ms per round |", "|---|---|"]
    lines += [f"| {k[8:]} | {v / r * 1e3:.2f} |" for k, v in server]
    return lines


def _ratio(a: float, b: float) -> str:
    """``a / b`` to two places, "-" when ``b`` was not measured (0)."""
    return f"{a / b:.2f}" if b else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/secagg_rounds.md")
    parser.add_argument("--flower-rounds", type=int, default=3, metavar="R",
                        help="rounds of Flower 1.42's own SecAgg+ per n, on the same grid (rounds "
                             "2..R timed; 0 skips it)")
    parser.add_argument("--split", type=int, default=0, metavar="N",
                        help="also profile one SecAgg+ run at N sites (per-part CPU split)")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error(f"--rounds: expected at least 3 (rounds 2..R-1 are timed), got {args.rounds}")
    if args.flower_rounds == 1 or args.flower_rounds < 0:
        parser.error(f"--flower-rounds: expected 0 (skip) or at least 2 (rounds 2..R are timed), "
                     f"got {args.flower_rounds}")
    rows, site_rows, floor_rows, flower_rows = [], [], [], []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sites:
            plain: list[float] = []
            secure: list[float] = []
            probes: list[tuple[tuple[float, float], tuple[float, float]]] = []
            cpu_p: list[dict[str, float]] = []
            cpu_s: list[dict[str, float]] = []
            for rep in range(args.repeats):
                base = {"sites": n, "rounds": args.rounds, "partition": "iid", "hidden": 1500,
                        "out": tmp, "lineage": True}
                p_run, s_run = interleaved([
                    SimulationConfig.load(None, {**base, "run_id": f"p{n}-{rep}"}),
                    SimulationConfig.load(None, {**base, "run_id": f"s{n}-{rep}", "secagg.enabled": True}),
                ])
                plain += p_run.wall
                secure += s_run.wall
                probes += list(zip(p_run.probes, s_run.probes, strict=True))
                # the round's CPU outside the sites' handlers: the server and the grid
                p_run.cpu["server"] = statistics.fmean(p_run.thread_cpu) - p_run.cpu["plain_site"]
                s_run.cpu["server"] = statistics.fmean(s_run.thread_cpu) - s_run.cpu["secagg_site"]
                cpu_p.append(p_run.cpu)
                cpu_s.append(s_run.cpu)
                print(n, rep, statistics.median(p_run.wall), statistics.median(s_run.wall),
                      file=sys.stderr)
            p, s = statistics.median(plain), statistics.median(secure)
            # ratio of each SecAgg+ round to the plain round run just before it
            paired = [b / a for a, b in zip(plain, secure, strict=True)]
            floor = min(x for pair in probes for probe in pair for x in probe)
            by_state = {}  # host state -> (ratio of the medians, plain rounds, SecAgg+ rounds)
            for state in (True, False):
                ps = [x for x, (pp, _) in zip(plain, probes, strict=True) if quiet(pp, floor) is state]
                ss = [x for x, (_, sp) in zip(secure, probes, strict=True) if quiet(sp, floor) is state]
                by_state[state] = ((statistics.median(ss) / statistics.median(ps)
                                    if ps and ss else float("nan")), len(ps), len(ss))
            q1, _, q3 = statistics.quantiles(paired, n=4)
            rows.append((n, p, s, statistics.median(paired), q1, q3, min(paired), max(paired),
                         by_state[True], by_state[False], len(paired)))

            def med(runs: list[dict[str, float]], key: str, n: int = n) -> float:
                return statistics.median(r.get(key, 0.0) for r in runs) / n * 1e3

            train_p, site_p = med(cpu_p, "train"), med(cpu_p, "plain_site")
            train_s, site_s = med(cpu_s, "train"), med(cpu_s, "secagg_site")
            site_rows.append((n, train_p, site_p, train_s, site_s,
                              med(cpu_p, "server", 1), med(cpu_s, "server", 1)))
            k, site_floor, server_floor = crypto_floor(n)
            floor_rows.append((n, k, p, s, train_p / 1e3, site_floor, server_floor,
                               message_floor(n) / n))
            if args.flower_rounds:
                holders, t, fw, fsite, fserver = flower_legacy_round(n, args.flower_rounds)
                flower_rows.append((n, holders, t, fw, s, fsite * 1e3, site_s - train_s,
                                    fserver * 1e3, med(cpu_s, "server", 1)))
                print("flower", n, fw, fsite, fserver, file=sys.stderr)
        split = split_run(args.split, args.rounds, tmp) if args.split else []
    load1 = os.getloadavg()[0]
    lines = [
        "## SecAgg+ whole-round cost in the pipeline (issue 6, point 7)",
        "",
        f"Command: `python benchmarks/bench_secagg_rounds.py --sites {' '.join(map(str, args.sites))} "
        f"--rounds {args.rounds} --repeats {args.repeats}"
        f"{f' --split {args.split}' if args.split else ''}` (digits, iid, MLP hidden 1500: d = 112,510; "
        "every site every round; the project's ServerApp/ClientApp on the in-process grid, so a "
        "round's wall time is all sites' training + protocol work + the server's). "
        f"Load average {load0:.1f} at start, {load1:.1f} at end (2 cores shared with other jobs).",
        "",
        "Rounds interleaved: each repeat runs the plain and the SecAgg+ federation side by side "
        "in one process, one round at a time each, in turn (`interleaved`), so SecAgg+ round r "
        "runs right after plain round r, a second or so apart rather than a whole run apart. "
        "Rounds 2..R-1 of every repeat are timed (round 1 has start-up and the first round's "
        "share exchange; round R sets no next round up). The paired ratio is each SecAgg+ "
        "round's time over the plain round just before it; the table gives the median over "
        "all pairs with its quartiles and range. The host switches between a quiet and a "
        "contended state every few seconds (cores about 1.4x slower in the second); a 5 ms "
        "X25519 probe before and after each round (`host_probe`) classifies the rounds that "
        "ran wholly in one state (probes within 15% of the fastest of the run: quiet), and the "
        "last two columns give the ratio of the median SecAgg+ round to the median plain "
        "round within each state, with the number of (plain, SecAgg+) rounds.",
        "",
        "The in-process grid calls the ClientApp directly in `send_and_receive` (no polling), "
        "so SecAgg+'s message exchanges pay no poll tick here. Round 1 takes three "
        "exchanges (share, masked input, unmask; its keys come with the handshake reply), "
        "every later round two (masked input, unmask): each round's keys ride on the "
        "previous round's masked-input reply and its encrypted shares on that round's "
        "unmask reply.",
        "",
        "| n sites | plain FedAvg s/round (median) | SecAgg+ FedAvg s/round (median) "
        "| ratio, round-paired: median [quartiles] (min-max), pairs | quiet host: ratio (rounds) "
        "| contended host: ratio (rounds) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    def in_state(ratio: float, n_plain: int, n_secure: int) -> str:
        return f"{ratio:.2f} ({n_plain}, {n_secure})" if n_plain and n_secure else \
            f"- ({n_plain}, {n_secure})"

    for n, p, s, r, q1, q3, rmin, rmax, quiet_host, busy_host, pairs in rows:
        lines.append(f"| {n} | {p:.3f} | {s:.3f} | {r:.2f} [{q1:.2f}-{q3:.2f}] ({rmin:.2f}-{rmax:.2f}), "
                     f"{pairs} | {in_state(*quiet_host)} | {in_state(*busy_host)} "
                     f"| <= 2 ({'met' if r <= 2 else 'NOT met'}) |")
    lines += [
        "",
        "Per site and round (CPU time of the federation's thread, ms; median over repeats). "
        "In a deployment sites run "
        "in parallel, so this, not the sum over sites, is what a round waits for at the sites. "
        "Training is the same local step in both modes; 'plain site' adds the update digest, "
        "signature and ledger entry; 'SecAgg+ site' is all four protocol handlers (keys, "
        "Shamir sharing + encryption, quantisation + masking, share reveal, state and "
        "message handling) including training.",
        "",
        "The server columns are per round: the CPU time of the federation's thread in a "
        "round minus its sites' handlers, i.e. the ServerApp's work (sampling, the protocol's "
        "server stages or the plain replies' signature and digest checks, aggregation, "
        "evaluation, lineage, checkpoint) plus the grid's message dispatch. The checkpoint "
        "and lineage writes that run in the server's background thread are not in it.",
        "",
        "| n sites | training, plain run | plain site total | training, SecAgg+ run "
        "| SecAgg+ site total | SecAgg+ site / training | plain site / training "
        "| server per round, plain (ms) | server per round, SecAgg+ (ms) | server, SecAgg+ / plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, tp, sp, ts, ss, vp, vs in site_rows:
        lines.append(f"| {n} | {tp:.2f} | {sp:.2f} | {ts:.2f} | {ss:.2f} | {_ratio(ss, ts)} "
                     f"| {_ratio(sp, tp)} | {vp:.1f} | {vs:.1f} | {_ratio(vs, vp)} |")
    lines += [
        "",
        "### How far the protocol's own cost leaves room for 2x (same run)",
        "",
        "Site crypto floor: per site and round, only the cryptographic work no SecAgg+ "
        "implementation can skip, timed with the functions the protocol calls (best of "
        "repeats, process CPU): two X25519 key pairs, 2k agreements + HKDF, two Shamir "
        "splits, k share encryptions and k decryptions, k + 2 keystreams of d + 2 words "
        "added into the vector (`crypto_floor`). Server crypto floor: per round, summing the "
        "n masked vectors and removing n self masks. Lower bound = n x (training + site "
        "floor) + server floor: a SecAgg+ round on this grid with no messages, records, "
        "state, checks or evaluation at all. Glue = the rest of the measured SecAgg+ round "
        "per site (two message exchanges, records, state, quantisation, checks, the "
        "server's evaluation, lineage and checkpoint); 'allowed' = what 2x the plain round "
        "leaves for it. Flower message floor: Flower's own cost of the extra empty "
        "request/reply exchange per site on the same grid (`message_floor`).",
        "",
        "| n | k | site crypto floor (ms) | server crypto floor (ms) | lower bound / plain "
        "| measured / plain | glue per site, measured (ms) | glue per site allowed by 2x (ms) "
        "| Flower message floor, 1 exchange (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, k, p, s, train, site_floor, server_floor, msg in floor_rows:
        bound = n * (train + site_floor) + server_floor
        lines.append(f"| {n} | {k} | {site_floor * 1e3:.2f} | {server_floor * 1e3:.1f} "
                     f"| {bound / p:.2f} | {s / p:.2f} | {(s - bound) / n * 1e3:.2f} "
                     f"| {(2 * p - bound) / n * 1e3:.2f} | {msg * 1e3:.3f} |")
    if flower_rows:
        lines += [
            "",
            "### Against Flower 1.42's own SecAgg+ (same grid, same n and d)",
            "",
            "Flower's legacy `SecAggPlusWorkflow` (server) and `secaggplus_mod` (sites) on the "
            "same in-process grid, with the same share holders (k + 1) and threshold t, 2^20 "
            "levels and clipping range 1 (`flower_legacy_round`; rounds 2.."
            f"{args.flower_rounds}, median). Flower's sites return a fixed update without "
            "training, so its site column is its protocol alone; fedsilo's site column is the "
            "SecAgg+ site total above minus its training. Round times: Flower's is its protocol "
            "and FedAvg only; fedsilo's SecAgg+ round (from the table at the top) also trains "
            "every site and runs the server's evaluation, lineage and checkpoint. Server: CPU "
            "per round outside the sites' handlers (for Flower, without the grid's copies of its "
            "shared message content). Flower's CPU times are the process's, since its Shamir "
            "code runs in thread pools.",
            "",
            "| n | holders k + 1 | t | Flower round (s) | fedsilo SecAgg+ round, with training (s) "
            "| speed-up | Flower per site (ms) | fedsilo per site, protocol (ms) | speed-up "
            "| Flower server per round (ms) | fedsilo server per round (ms) | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, holders, t, fw, fs, fsite, site, fserver, server in flower_rows:
            lines.append(f"| {n} | {holders} | {t} | {fw:.3f} | {fs:.3f} | {fw / fs:.1f}x "
                         f"| {fsite:.2f} | {site:.2f} | {fsite / site:.1f}x | {fserver:.1f} "
                         f"| {server:.1f} | {fserver / server:.1f}x |")
    lines += split
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

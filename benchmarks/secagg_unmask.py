"""Section 3 of `bench_secagg.py`: the server's unmask step alone at large n with dropouts
(stages 1-3 run in memory first; the unmask step is timed, and split by component)."""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedsilo.common.cpus import usable_cpus
from fedsilo.privacy.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    crypto,
    shamir,
)
from fedsilo.privacy.secagg.graph import ring_order
from fedsilo.privacy.secagg.reconstruct import reconstruct_all
from fedsilo.privacy.secagg.unmask import _context

sys.path.insert(0, str(Path(__file__).resolve().parent))
from secagg_common import RUN_ID, D, inputs_for, note  # noqa: E402


# ----------------------------------------------------------------------------- 3
def prepare_unmask(inp: dict[int, tuple[np.ndarray, float]], cfg: SecAggConfig,
                   dropped: list[int]) -> tuple[SecAggServer, dict[int, object] | str, float]:
    """Stages 1-3 in memory, sites in ``dropped`` leaving before the masked stage.

    Returns (server, the unmask replies or the abort reason, wall seconds of stages 1-3
    and the sites' unmask replies, all sites run one after another).
    """
    ids = sorted(inp)
    srv = SecAggServer(cfg, RUN_ID, 1, ids, D)
    cl = {i: SecAggClient(i) for i in ids}
    gone = set(dropped)
    t0 = time.perf_counter()
    try:
        req = srv.setup_request()
        reqs: dict = srv.on_keys({i: cl[i].setup(req) for i in ids})
        reqs = srv.on_shares({i: cl[i].share(r) for i, r in reqs.items()})
        reqs = srv.on_masked({i: cl[i].masked_input(r, *inp[i]) for i, r in reqs.items()
                              if i not in gone})
    except SecAggAbort as e:
        return srv, str(e), time.perf_counter() - t0
    replies = {i: cl[i].unmask(r) for i, r in reqs.items()}
    return srv, replies, time.perf_counter() - t0


def time_unmask(srv: SecAggServer, replies: dict[int, object],
                workers: int | None) -> tuple[float, float, float, bool]:
    """(wall, this process's CPU, worker processes' CPU, used workers) of one unmask step
    on a copy of ``srv`` (start-up of the worker processes included)."""
    s = copy.deepcopy(srv)
    s.unmask_workers = workers
    t0, c0, k0 = time.perf_counter(), time.process_time(), os.times()
    s.on_unmask(replies)
    wall, cpu, k1 = time.perf_counter() - t0, time.process_time() - c0, os.times()
    kids = (k1.children_user + k1.children_system) - (k0.children_user + k0.children_system)
    return wall, cpu, kids, s.unmask_parallel


def unmask_components(srv: SecAggServer, replies: dict[int, object]) -> list[str]:
    """Serial CPU time of each part of the unmask step, each timed on its own."""
    s = copy.deepcopy(srv)
    u3 = set(s.sets.u3)
    dropped = [n for n in s.sets.u2 if n not in u3]
    parts: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], object]) -> object:
        c0 = time.process_time()
        out = fn()
        parts[label] = parts.get(label, 0.0) + time.process_time() - c0
        return out

    pts_b, pts_sk = timed("validate + decode the share replies",
                          lambda: s.unmask_shares(replies))  # type: ignore[misc]
    sks = timed("Shamir: reconstruct + verify all secrets (numpy batch)",
                lambda: reconstruct_all(
                    s._x, s.t, s.reasons, "mask key", dropped, pts_sk,
                    lambda i, v: crypto.public_from_private(v) == s.keys[i].s_pk))
    seeds = timed("Shamir: reconstruct + verify all secrets (numpy batch)",
                  lambda: reconstruct_all(
                      s._x, s.t, s.reasons, "mask seed", sorted(u3), pts_b,
                      lambda i, v: crypto.commit(v, RUN_ID, 1, i) == s.commitments[i]))
    t = s.t
    rows = [sorted(p)[:t] for p in [*pts_b.values(), *pts_sk.values()]]
    timed("(before: Shamir one secret at a time, Python ints)",
          lambda: [shamir.interpolate([(s._x[j], y) for j, y in row]) for row in rows])
    pairs = [(i, j) for i in dropped for j in s.graph[i] if j in u3]
    sk_obj = {i: crypto.private_key(sks[i]) for i in dropped}  # type: ignore[index]
    pk_obj = {j: crypto.public_key(s.keys[j].s_pk) for j in u3}
    shared = timed(f"X25519 exchange ({len(pairs)} pairs)",
                   lambda: [sk_obj[i].exchange(pk_obj[j]) for i, j in pairs])
    timed("HKDF-SHA256 (+ key parsing, info)",
          lambda: [crypto.agree(sk_obj[i], pk_obj[j], purpose=b"mask", run_id=RUN_ID,
                                server_round=1, node_a=i, node_b=j) for i, j in pairs])
    parts["HKDF-SHA256 (+ key parsing, info)"] -= parts[f"X25519 exchange ({len(pairs)} pairs)"]
    del shared
    gen = crypto.MaskGenerator(D + 2)
    keys = [os.urandom(32) for _ in range(len(pairs) + len(seeds))]  # type: ignore[arg-type]
    timed(f"AES-128-CTR keystream ({len(keys)} masks of d + 2 words)",
          lambda: [gen.mask(k) for k in keys])
    acc = np.zeros(D + 2, np.uint32)
    view, other = gen.mask(keys[0]).copy(), gen.mask(keys[1]).copy()
    from fedsilo.privacy.secagg.kernels import add_two

    add_two(acc, view, other, False, True)  # compiled (or loaded from cache) before timing
    timed(f"uint32 accumulation ({len(keys)} masks, two per pass)",
          lambda: [add_two(acc, view, other, False, True) for _ in range(len(keys) // 2)])
    total = sum(v for k, v in parts.items() if not k.startswith("(before"))
    out = ["| part | CPU (s) | share |", "|---|---|---|"]
    for k, v in parts.items():
        share = "" if k.startswith("(before") else f"{100 * v / total:.0f}%"
        out.append(f"| {k} | {v:.3f} | {share} |")
    out.append(f"| total (serial) | {total:.3f} | 100% |")
    return out


def unmask_rows(n: int, repeat: int) -> tuple[list[str], list[str]]:
    rows = ["| n | dropout pattern (30% at masked stage) | degree k | t | outcome "
            "| masks removed (seeds + pairs) | processes | unmask wall (s), median [min-max] "
            "| CPU this process (s) | CPU workers (s) | stages 1-3, all sites sequential, wall (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    inp = inputs_for(n, D)
    ids = sorted(inp)
    ring = ring_order(ids, RUN_ID, 1)
    spread = [ring[p] for p in range(n) if p % 10 in (0, 3, 6)]
    rng = np.random.default_rng(7)
    uniform = sorted(rng.choice(ids, size=int(0.3 * n), replace=False).tolist())
    cases = [("spread", "evenly spread on the ring", spread, None),
             ("uniform", "uniform random", uniform, None),
             ("uniform_k100", "uniform random", uniform, 100)]
    parts: list[str] = []
    for tag, label, dropped, degree in cases:
        srv, replies, prep = prepare_unmask(inp, SecAggConfig(degree=degree, max_weight=10.0),
                                            dropped)
        head = f"| {n} | {label} | {srv.k} | {srv.t} "
        if isinstance(replies, str):
            rows.append(head + f"| abort: {replies} | - | - | - | - | - | {prep:.1f} |")
            print(rows[-1], flush=True)
            continue
        u3 = set(srv.sets.u3)
        pairs = sum(j in u3 for i in dropped for j in srv.graph[i])
        runs: dict[str, list[tuple[float, float, float, bool]]] = {"1": [], "auto": []}
        for _ in range(repeat):  # alternate, so both see the same machine load
            runs["1"].append(time_unmask(srv, replies, 1))
            runs["auto"].append(time_unmask(srv, replies, None))
        auto = f"{usable_cpus()} (auto, workers started by {_context().get_start_method()})"
        for key, procs in (("1", "1 (serial)"), ("auto", auto)):
            walls = sorted(r[0] for r in runs[key])
            med = walls[len(walls) // 2]
            cpu = statistics.median(r[1] for r in runs[key])
            kids = statistics.median(r[2] for r in runs[key])
            if key == "auto" and not all(r[3] for r in runs[key]):
                procs += ", workers not started (below PARALLEL_MIN_WORDS)"
            note(f"unmask_wall_{key}_{tag}", med)
            note(f"unmask_cpu_{key}_{tag}", cpu + kids)
            note(f"unmask_k_{tag}", srv.k)
            rows.append(head + f"| ok | {len(u3)} + {pairs} | {procs} | {med:.3f} "
                        f"[{walls[0]:.3f}-{walls[-1]:.3f}] | {cpu:.3f} | {kids:.3f} "
                        f"| {prep:.1f} |")
            print(rows[-1], flush=True)
        if tag == "uniform_k100":
            parts = unmask_components(srv, replies)
            print("\n".join(parts), flush=True)
    return rows, parts

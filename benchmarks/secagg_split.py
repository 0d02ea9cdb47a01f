"""Where one SecAgg+ run's CPU goes, part by part (`bench_secagg_rounds.py --split N`).

Each listed function is wrapped for the run; a part's time is exclusive (it excludes the
parts listed here that it calls), and crypto called inside a server step is counted in
that step. Site parts are reported per site and round, server parts per round, over
rounds 2..R-1.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import fedsilo.client.secagg_handler as secagg_handler
import fedsilo.client.update as client_update
import fedsilo.privacy.secagg.client as secagg_client
import fedsilo.privacy.secagg.crypto as secagg_crypto
import fedsilo.privacy.secagg.server as secagg_server
import fedsilo.privacy.secagg.shamir as secagg_shamir
import fedsilo.server.secagg_round as secagg_round
import fedsilo.server.secagg_stages as secagg_stages
from fedsilo.simulations.config import SimulationConfig
from fedsilo.simulations.runner import run_federation

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

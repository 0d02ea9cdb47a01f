"""SecAgg+ benchmark: fedsilo.privacy.secagg vs plain aggregation vs Flower 1.42's legacy
SecAgg+ primitives, all in one run, in memory (no Ray, no transport).

Measures, for d = 10^5:
  1. per-round server and per-site compute time for n in {10, 50, 100}, no dropout,
     against plain aggregation (weighted sum of the same float vectors);
  2. share / reconstruct / mask-generation time against Flower's
     ``flwr.common.secure_aggregation`` (crypto/shamir.create_shares / combine_shares,
     secaggplus_utils.pseudo_rand_gen) with the same number of holders and threshold;
  3. the server's unmask step alone at n = 1000 with 30% dropout.

Run:  python benchmarks/bench_secagg.py [--quick] [--out benchmarks/results/secagg.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import cryptography  # noqa: E402
import flwr  # noqa: E402
import numpy as np  # noqa: E402
from flwr.common.secure_aggregation.crypto.shamir import (  # noqa: E402
    combine_shares,
    create_shares,
)
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen  # noqa: E402
from flwr.supercore.primitives.asymmetric import (  # noqa: E402
    generate_key_pairs,
    private_key_to_bytes,
)

from fedsilo.common.cpus import usable_cpus  # noqa: E402
from fedsilo.privacy.secagg import (  # noqa: E402
    SecAggConfig,
    crypto,
    shamir,
)

# the in-memory protocol driver is a test helper (the server's driver is SecAggSession)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from secagg.memory_driver import run_round  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules
from secagg_common import RUN_ID, SUMMARY, D, best, inputs_for, note  # noqa: E402
from secagg_unmask import unmask_rows  # noqa: E402


# ----------------------------------------------------------------------------- 1
def round_rows(cases: list[tuple[int, int]], repeat: int) -> list[str]:
    rows = ["| n | d | degree k | threshold t | SecAgg server CPU (s) | server wall (s) "
            "| SecAgg per site CPU, mean (s) | plain, streaming (s) | plain, stacked n x d (s) "
            "| server / plain streaming | server / plain stacked |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, d in cases:
        inp = inputs_for(n, d)
        srv, wall, site, kt = float("inf"), float("inf"), float("inf"), (0, 0)
        for _ in range(repeat):
            rep = run_round(inp, SecAggConfig(max_weight=10.0), run_id=RUN_ID, record=False)
            assert rep.ok and rep.server is not None, rep.reason
            srv = min(srv, sum(rep.server_cpu_seconds.values()))
            wall = min(wall, sum(rep.server_seconds.values()))
            site = min(site, float(np.mean(list(rep.site_cpu_seconds.values()))))
            kt = (rep.server.k, rep.server.t)
        xs = [x for x, _ in inp.values()]
        ws = np.array([w for _, w in inp.values()])

        def streaming(xs: list[np.ndarray] = xs, ws: np.ndarray = ws, d: int = d) -> np.ndarray:
            acc = np.zeros(d, np.float64)
            for x, w in zip(xs, ws, strict=True):
                acc += w * x
            return acc

        stacked_x = np.stack(xs)
        plain_s = best(streaming, 5)
        plain_m = best(lambda sx=stacked_x, ws=ws: ws.astype(np.float32) @ sx, 5)
        if d == D:
            note("round_vs_streaming", srv / plain_s)
            note("round_vs_stacked", srv / plain_m)
        rows.append(f"| {n} | {d} | {kt[0]} | {kt[1]} | {srv:.4f} | {wall:.4f} | {site:.4f} "
                    f"| {plain_s:.4f} | {plain_m:.4f} | {srv / plain_s:.1f}x "
                    f"| {srv / plain_m:.1f}x |")
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- 2
def primitive_rows(ns: list[int], flower_repeat: int) -> list[str]:
    rows = ["| n | holders k+1 | t | share per site: fedsilo (ms) | Flower (ms) | speed-up "
            "| reconstruct per secret: fedsilo (ms) | Flower seed / Flower key (ms) "
            "| speed-up (seed, key) | reconstruct per round, no dropout: fedsilo / Flower (s) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    fl_sk = private_key_to_bytes(generate_key_pairs()[0])  # Flower shares a PEM key
    for n in ns:
        for label, cfg in (("SecAgg+", SecAggConfig()), ("complete", SecAggConfig(degree=n))):
            k, t = cfg.resolve(n)
            holders = k + 1
            seed, sk = os.urandom(32), crypto.generate_keypair()[0]
            xs = list(range(1, holders + 1))
            ours_share = best(lambda xs=xs, t=t, seed=seed, sk=sk: (
                shamir.split(seed, xs, t), shamir.split(sk, xs, t)), 5)
            fl_share = best(lambda t=t, h=holders, seed=seed: (
                create_shares(seed, t, h), create_shares(fl_sk, t, h)), flower_repeat)
            sh = shamir.split(seed, xs, t)
            ours_rec = best(lambda xs=xs, sh=sh, t=t: shamir.combine(xs[:t], sh[:t]), 20)
            fb = create_shares(seed, t, holders)
            fk = create_shares(fl_sk, t, holders)
            fl_rec_b = best(lambda fb=fb, t=t: combine_shares(fb[:t]), flower_repeat)
            fl_rec_k = best(lambda fk=fk, t=t: combine_shares(fk[:t]), flower_repeat)
            note("share", fl_share / ours_share)
            note("reconstruct", fl_rec_b / ours_rec)
            rows.append(
                f"| {n} ({label}) | {holders} | {t} | {ours_share * 1e3:.2f} "
                f"| {fl_share * 1e3:.1f} | {fl_share / ours_share:.0f}x "
                f"| {ours_rec * 1e3:.3f} | {fl_rec_b * 1e3:.2f} / {fl_rec_k * 1e3:.1f} "
                f"| {fl_rec_b / ours_rec:.0f}x, {fl_rec_k / ours_rec:.0f}x "
                f"| {n * ours_rec:.4f} / {n * fl_rec_b:.3f} |")
            print(rows[-1], flush=True)
    return rows


def mask_rows(repeat: int) -> list[str]:
    seeds = [os.urandom(32) for _ in range(repeat)]
    gen = crypto.MaskGenerator(D)
    acc = np.zeros(D, np.uint32)

    def ours() -> None:
        for s in seeds:
            gen.mask(s)

    def ours_acc() -> None:  # as the protocol adds them: two keystreams per pass
        gen.add_masks(acc, seeds, [False] * len(seeds))

    acc64 = np.zeros(D, np.int64)

    def flower() -> None:
        for s in seeds:
            pseudo_rand_gen(s, 1 << 32, [(D,)])

    def flower_acc() -> None:
        for s in seeds:
            acc64.__iadd__(pseudo_rand_gen(s, 1 << 32, [(D,)])[0])
        np.mod(acc64, 1 << 32, out=acc64)

    o, oa = best(ours, 3) / repeat, best(ours_acc, 3) / repeat
    f, fa = best(flower, 3) / repeat, best(flower_acc, 3) / repeat
    note("mask", f / o)
    note("mask_acc", fa / oa)
    return ["| d | fedsilo AES-128-CTR mask (ms) | Flower RandomState mask (ms) | speed-up "
            "| with accumulate: fedsilo uint32 (ms) | Flower int64 + mod (ms) | speed-up |",
            "|---|---|---|---|---|---|---|",
            f"| {D} | {o * 1e3:.3f} | {f * 1e3:.3f} | {f / o:.1f}x | {oa * 1e3:.3f} "
            f"| {fa * 1e3:.3f} | {fa / oa:.1f}x |"]


def targets() -> list[str]:
    """The issue's targets against what this run measured."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    r, rs = SUMMARY["round_vs_streaming"], SUMMARY["round_vs_stacked"]
    sh, rc = min(SUMMARY["share"]), min(SUMMARY["reconstruct"])
    mk = min(SUMMARY["mask"] + SUMMARY["mask_acc"])
    out = ["### Targets (issue 6, point 7)", "",
           "| target | measured | verdict |", "|---|---|---|",
           f"| round overhead <= 2x plain aggregation (no dropout) | judged on whole rounds, in "
           f"the pipeline: next section (`bench_secagg_rounds.py`). For reference, this run's "
           f"section 1 compares the server's protocol compute alone with a bare weighted sum: "
           f"{min(r):.1f}x-{max(r):.1f}x streamed, {min(rs):.1f}x-{max(rs):.1f}x stacked; that "
           f"is not a round (it leaves out the sites' work, most of a round, and the plain "
           f"server's own per-reply signature and digest checks) | see the next section |",
           f"| share and reconstruct >= 100x faster than Flower | share >= {sh:.0f}x, "
           f"reconstruct >= {rc:.0f}x (32-byte seed; PEM key: more) "
           f"| {verdict(sh >= 100 and rc >= 100)} |",
           f"| mask generation >= 4x faster than Flower | >= {mk:.1f}x | {verdict(mk >= 4)} |"]
    for tag, label in (("spread", "dropouts evenly spread"),
                       ("uniform_k100", "uniform random dropouts")):
        if f"unmask_wall_auto_{tag}" in SUMMARY:
            k = int(SUMMARY[f"unmask_k_{tag}"][0])
            wall, cpu = SUMMARY[f"unmask_wall_auto_{tag}"][0], SUMMARY[f"unmask_cpu_auto_{tag}"][0]
            wall1, cpu1 = SUMMARY[f"unmask_wall_1_{tag}"][0], SUMMARY[f"unmask_cpu_1_{tag}"][0]
            out.append(f"| server unmask n=1000, d=1e5, 30% dropout <= 1.5 s (k = {k}, {label}; "
                       f"judged on wall time, it is a latency) | {wall:.2f} s wall with "
                       f"{usable_cpus()} processes ({cpu:.2f} s CPU in all); one process: "
                       f"{wall1:.2f} s wall, {cpu1:.2f} s CPU | {verdict(wall <= 1.5)} |")
    out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small n, fewer repeats (smoke test)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/secagg.md"))
    args = ap.parse_args()
    ns = [10, 20] if args.quick else [10, 50, 100]
    n_unmask = 100 if args.quick else 1000
    cmd = "python " + " ".join(sys.argv)
    t0 = time.time()
    load = os.getloadavg()
    print(f"load average {load}", flush=True)
    print("1. per-round", flush=True)
    r1 = round_rows([(n, D) for n in ns] + [(ns[1], 10 * D)], repeat=1 if args.quick else 2)
    print("2. primitives", flush=True)
    r2 = primitive_rows(ns, flower_repeat=1 if args.quick else 2)
    r2m = mask_rows(repeat=20 if args.quick else 100)
    print("\n".join(r2m), flush=True)
    print("3. unmask", flush=True)
    r3, r3parts = unmask_rows(n_unmask, repeat=2 if args.quick else 5)
    lines = [
        "## Secure aggregation (SecAgg+)",
        "",
        f"Command: `{cmd}` (run from the repository root; total {time.time() - t0:.0f} s).",
        f"Machine: {os.cpu_count()} cores shared with other jobs (load average at start "
        f"{load[0]:.1f}, at end {os.getloadavg()[0]:.1f}), Python {platform.python_version()}, numpy {np.__version__}, "
        f"cryptography {cryptography.__version__}, flwr {flwr.__version__}. d = {D}. "
        "All times are compute only, in memory (no Ray, no network), best of repeats; "
        "process CPU time unless marked wall (the machine is shared, so "
        "wall time includes waiting for a core).",
        "",
        "### 1. Per round, no dropout: SecAgg+ vs plain aggregation",
        "",
        "(The last row, d = 10^6, shows how the ratio moves as the d-independent costs "
        "- key validation, Shamir reconstruction - are amortised; the targets use d = 10^5.)",
        "",
        "Server = all four server stages (key routing, share routing, summing masked "
        "vectors, reconstruction + unmasking). Per site = all four site stages (key "
        "generation, Shamir sharing + encryption, quantisation + masking, share reveal), "
        "excluding training. Plain = weighted sum of the same float32 vectors (the "
        "server's whole job without SecAgg; sites do no extra work), either streamed "
        "reply by reply into a float64 accumulator, or as one BLAS product over the "
        "already stacked n x d matrix (stacking not timed; data warm in cache).",
        "",
        *r1,
        "",
        "### 2. Primitives vs Flower 1.42 legacy SecAgg+ (same holders and threshold)",
        "",
        "Share per site = sharing the mask seed (32 B) and the mask private key: fedsilo "
        "shares a raw 32-byte X25519 key as one GF(2^521-1) element; Flower shares its "
        "306-byte PEM EC key in 16-byte chunks (`create_shares`). Reconstruct = one secret "
        "from t shares (`combine_shares`); Flower seed = 32-byte seed, Flower key = PEM "
        "key (dropped sites). 'complete' rows use the complete graph (original SecAgg).",
        "",
        *r2,
        "",
        "Mask generation, one mask of d words (fedsilo: the AES-128-CTR keystream, taken from "
        "OpenSSL's AES-GCM encryption of zeros, whose VAES code path is faster than its CTR one):",
        "",
        *r2m,
        "",
        f"### 3. Server unmask step alone, n = {n_unmask}, d = {D}, 30% dropout",
        "",
        "Time of the server's last stage only (validate share replies, reconstruct and "
        "verify every seed and every dropped site's key, regenerate and remove all masks, "
        "consistency check, dequantise). With the majority threshold t = (k+1)//2 + 1, "
        "30% uniform random dropout leaves some neighbourhood of the default k = 20 with "
        "fewer than t survivors, so the round aborts cleanly; k = 100 is needed for "
        "uniform random 30% dropout at n = 1000 (P(fail) ~ 1%).",
        "",
        "Each case builds the state before the unmask step once, then times the step on "
        "copies of it, alternating one process (serial) and the automatic setting (one "
        "process per usable CPU: this one plus worker processes that regenerate dropped "
        "sites' pairwise masks; their start-up is inside the time). CPU this process = "
        "the server process; CPU workers = the worker processes (reaped children).",
        "",
        *r3,
        "",
        "Where the serial unmask time goes (k = 100 case, each part timed on its own, "
        "process CPU; the row in parentheses is the Shamir reconstruction as it was "
        "before the numpy batch, for comparison):",
        "",
        *r3parts,
        "",
    ]
    lines += targets()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

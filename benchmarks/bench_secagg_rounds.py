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
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fedsilo.simulations.config import SimulationConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, run as a script
from secagg_interleave import interleaved, quiet  # noqa: E402
from secagg_reference import crypto_floor, flower_legacy_round, message_floor  # noqa: E402
from secagg_split import split_run  # noqa: E402


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

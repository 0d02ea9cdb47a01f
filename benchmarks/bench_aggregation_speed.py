"""Aggregation speed: fedsilo's kernels vs Flower 1.42's on the same inputs.

For each n (updates of d float32 values) the script builds, once:
  * fedsilo reply Messages (one flat float32 delta each, the fedsilo reply contract),
  * Flower reply Messages carrying the same vectors split into a handful of layers
    (Flower aggregates models, fedsilo deltas: the kernels see the same vectors),
and times, as the median of several repetitions:
  * the numpy bandwidth baseline: one pass summing the stacked n x d matrix;
  * the server's whole step as `fedsilo.server.round.plain_exchange` runs it, from the
    last reply received to the new global model ArrayRecord (issue 22, point 3): the
    replies "arrive" one by one (``--arrival-gap-ms`` apart) and are digested as they
    arrive (`fedsilo.server.reply_digests`); the clock starts when the last one arrives
    and covers its digest, `verify_plain` (screen, decode once, every site's digest and
    Ed25519 signature checked), the aggregate, the FedAvg step and the encode; the same
    step with every digest computed after the last reply (as before) is reported too;
  * whole server steps from reply Messages to the new global model ArrayRecord
    (fedsilo: screen + decode once + aggregate + server step + encode once;
    Flower: `<Strategy>.aggregate_train`);
  * Flower's legacy `flwr.server.strategy.aggregate.aggregate_krum` on ndarrays.
Results agree with Flower's (checked in the run) before timings are reported.

Run:  python benchmarks/bench_aggregation_speed.py --n 50 100 --out benchmarks/results/aggregation.md
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import flwr  # noqa: E402
import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import ConfigRecord  # noqa: E402
from flwr.server.strategy import aggregate as legacy  # noqa: E402
from flwr.serverapp import strategy as fl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.messages import flower_reply, message, reply_content  # noqa: E402

from fedsilo import lineage  # noqa: E402
from fedsilo.common.codec import ModelLayout, decode_flat  # noqa: E402
from fedsilo.privacy.screening import ScreeningPolicy  # noqa: E402
from fedsilo.server.aggregate import aggregate, step  # noqa: E402
from fedsilo.server.reply_digests import ReplyDigests  # noqa: E402
from fedsilo.server.spec import SiteInfo  # noqa: E402
from fedsilo.server.verify_replies import verify_plain  # noqa: E402
from fedsilo.strategies import make_aggregator, make_optimizer  # noqa: E402
from fedsilo.strategies.pipeline import batch_from_replies, encode_model  # noqa: E402

logging.getLogger("flwr").setLevel(logging.WARNING)
LAYER_FRACTIONS = (0.6, 0.001, 0.3, 0.0003, 0.0987)  # a handful of layers summing to d


def layer_sizes(d: int) -> list[int]:
    sizes = [int(f * d) for f in LAYER_FRACTIONS[:-1]]
    return [*sizes, d - sum(sizes)]


def split(vec: np.ndarray, sizes: list[int]) -> dict[str, np.ndarray]:
    bounds = np.cumsum(sizes)[:-1]
    return {f"layer{i}": part for i, part in enumerate(np.split(vec, bounds))}


def _once(fn: Callable, setup: Callable[[], object] | None) -> tuple[float, object]:
    arg = setup() if setup else None
    gc.collect()
    t0 = time.perf_counter()
    out = fn(arg) if setup else fn()
    return time.perf_counter() - t0, out


def compare(ours: Callable, ref: Callable, reps: int, ref_setup: Callable[[], object] | None = None,
            ours_setup: Callable[[], object] | None = None) -> tuple[float, object, float, object]:
    """Median times of ``ours`` and ``ref``, run alternately so load changes hit both.

    ``ours`` runs once untimed first (imports, first-touch of buffers). A ``*_setup``
    runs untimed before each call and its result is the call's argument.
    """
    t_ours, t_ref, out_ours, out_ref = [], [], None, None
    ours(ours_setup()) if ours_setup else ours()
    for _ in range(reps):
        t, out_ours = _once(ours, ours_setup)
        t_ours.append(t)
        t, out_ref = _once(ref, ref_setup)
        t_ref.append(t)
    return float(np.median(t_ours)), out_ours, float(np.median(t_ref)), out_ref


def flat_of(record) -> np.ndarray:
    return np.concatenate([record[k].numpy().reshape(-1) for k in record])


RUN_ID, ROUND = "bench", 1
FINGERPRINT = "sha256:" + "f" * 64


def signed_replies(deltas: np.ndarray, counts: np.ndarray, site_of: dict[int, str]
                   ) -> tuple[list, list[SiteInfo]]:
    """fedsilo replies as sites send them (digest and Ed25519 signature over it), and the
    handshake's view of the sites (public keys, fingerprints, declared counts)."""
    replies, sites = [], []
    for i, (node, site) in enumerate(site_of.items()):
        key = Ed25519PrivateKey.generate()
        content = reply_content(deltas[i], int(counts[i]), site_id=site)
        rec = content["site"]
        assert isinstance(rec, ConfigRecord)
        digest = lineage.update_digest(deltas[i])
        rec["update_digest"], rec["data_fingerprint"] = digest, FINGERPRINT
        rec["signature"] = lineage.sign_contribution(key, RUN_ID, ROUND, digest, FINGERPRINT)
        replies.append(message(content, node))
        sites.append(SiteInfo(site, node, lineage.public_key_hex(key), FINGERPRINT, "{}",
                              num_examples=int(counts.max())))
    return replies, sites


def server_steps(replies: list, sites: list[SiteInfo], model: np.ndarray, d: int, policy,
                 gap_s: float) -> tuple[Callable, Callable, Callable]:
    """(arrive, step, step_after): ``arrive()`` feeds all replies but the last to a fresh
    `ReplyDigests` ``gap_s`` apart, as a federation's replies arrive (untimed);
    ``step(digests)`` is the server's work from the last reply's arrival to the new global
    ArrayRecord, as `fedsilo.server.round.plain_exchange` does it; ``step_after()`` digests
    every reply after the last one is in (the server before issue 22, point 3)."""
    layout = ModelLayout(("w",), ((d,),), ("float32",))
    agg, opt = make_aggregator("mean"), make_optimizer("fedavg")

    def arrive() -> ReplyDigests:
        digests = ReplyDigests()
        for r in replies[:-1]:
            digests.submit(r)
            time.sleep(gap_s)
        return digests

    def step_(digests: ReplyDigests | None) -> object:
        if digests is not None:
            digests.submit(replies[-1])  # the last reply arrives: the clock is running
        verified = verify_plain(replies, sites, layout=layout, policy=policy, run_id=RUN_ID,
                                server_round=ROUND, digests=digests)
        if digests is not None:
            digests.close()
        if len(verified.contributions) != len(replies):
            raise AssertionError(f"replies rejected: {verified.rejected}")
        update, reason, _ = aggregate(verified.batch, verified.contributions, verified.rejected,
                                      dp=None, aggregator=agg, min_sites=1, dim=d)
        assert update is not None, reason
        new, _ = step(opt, model, update)
        return encode_model(new)

    return arrive, step_, lambda: step_(None)


def run(n: int, d: int, reps: int, legacy_reps: int, seed: int, gap_s: float = 0.02,
        mean_only: bool = False) -> list[tuple[str, float, float | None, str]]:
    rng = np.random.default_rng(seed)
    sizes = layer_sizes(d)
    model = rng.standard_normal(d, dtype=np.float32)
    # a shared direction plus site-specific noise of varied scale, so that Krum scores are
    # well separated (pure Gaussian rows are all equidistant: float32 ties decide ranks)
    common = 0.01 * rng.standard_normal(d, dtype=np.float32)
    scale = rng.permutation(np.linspace(0.5, 1.5, n)).astype(np.float32)[:, None]
    deltas = (common + 0.01 * scale * rng.standard_normal((n, d), dtype=np.float32)).astype(np.float32)
    counts = rng.integers(50, 500, size=n)
    f = max(1, n // 10)
    site_of = {i + 1: f"site-{i}" for i in range(n)}
    policy = ScreeningPolicy(max_norm=1e6)

    ours_replies, sites = signed_replies(deltas, counts, site_of)

    def flower_replies() -> list:
        # the same vectors as ours (Flower would carry local models; the kernels see vectors)
        return [flower_reply(split(deltas[i], sizes), int(counts[i]), i + 1) for i in range(n)]

    fl_replies = flower_replies()
    rows: list[tuple[str, float, float | None, str]] = []
    notes: list[str] = []


    def ours_step(spec: str, root: np.ndarray | None = None) -> Callable[[], object]:
        agg, opt = make_aggregator(spec), make_optimizer("fedavg")

        def step() -> object:
            batch, _ = batch_from_replies(ours_replies, dim=d, site_of=site_of, policy=policy)
            result = agg.aggregate(batch.with_root_update(root))
            return encode_model(opt.step(model, result.update))

        return step

    def check(ours_record, flower_record, label: str, rtol: float = 1e-4) -> None:
        a = decode_flat(ours_record["model"]) - model  # our step returns model + aggregate
        b = flat_of(flower_record)
        off = ~np.isclose(a, b, rtol=rtol, atol=1e-5)
        # Bulyan: where two values lie at exactly the same distance from a coordinate's
        # median, "the beta closest" is ambiguous and Flower's argpartition may pick the
        # other one; allow such exact float32 ties on a handful of coordinates.
        if off.sum() > (20 if label.startswith("bulyan") else 0):
            raise AssertionError(f"{label}: fedsilo and Flower disagree on {off.sum()} values "
                                 f"(max diff {np.abs(a - b).max()})")
        if off.any():
            notes.append(f"{label}: {off.sum()} of {a.size} coordinates differ from Flower's "
                         "(exact distance ties at the Bulyan window edge)")

    # weighted mean
    stacked = deltas.copy()
    # both sides take ~10 ms: many alternating repetitions keep the median stable
    t_mean, rec, t_bw, _ = compare(ours_step("mean"), lambda: stacked.sum(axis=0), 5 * reps)
    t_mean2, _, t_fl, fl_rec = compare(
        ours_step("mean"), lambda: fl.FedAvg().aggregate_train(1, fl_replies)[0], reps
    )
    check(rec, fl_rec, "mean")
    rows.append(("numpy bandwidth baseline: stacked.sum(axis=0)", t_bw, None, "reference"))
    rows.append(("mean: whole step (fedsilo) vs FedAvg.aggregate_train", t_mean2, t_fl, ">= 2x"))

    # the server's step as it runs it, integrity checks included (issue 22, point 3)
    arrive, server_step, server_step_after = server_steps(ours_replies, sites, model, d, policy, gap_s)
    def fedavg() -> object:
        return fl.FedAvg().aggregate_train(1, fl_replies)[0]

    t_srv, rec, t_fl2, fl_rec = compare(server_step, fedavg, reps, ours_setup=arrive)
    check(rec, fl_rec, "mean (server step)")
    t_seq, rec, t_fl3, _ = compare(server_step_after, fedavg, reps)
    check(rec, fl_rec, "mean (server step, digests after the last reply)")
    rows.append(("mean: server step from the last reply (digests as replies arrive + signatures "
                 "+ verify + aggregate + step + encode) vs FedAvg.aggregate_train",
                 t_srv, t_fl2, "no slower (issue 22.3)"))
    rows.append(("mean: server step, every digest after the last reply (before issue 22.3) "
                 "vs FedAvg.aggregate_train", t_seq, t_fl3, "informational"))
    if mean_only:
        return rows

    # coordinate-wise rules: Flower pops arrays from the replies, so rebuild them untimed
    for spec, strategy, target in (
        ("median", lambda: fl.FedMedian(), ">= 3x"),
        ("trimmed_mean:beta=0.2", lambda: fl.FedTrimmedAvg(beta=0.2), ">= 3x"),
    ):
        t_ours, rec, t_fl, fl_rec = compare(
            ours_step(spec), lambda r, s=strategy: s().aggregate_train(1, r)[0], reps, flower_replies
        )
        check(rec, fl_rec, spec)
        rows.append((f"{spec}: whole step vs Flower aggregate_train", t_ours, t_fl, target))

    for spec, strategy in (
        (f"krum:f={f}", lambda: fl.Krum(num_malicious_nodes=f)),
        (f"multi_krum:f={f},m={n - f}", lambda: fl.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f)),
        (f"bulyan:f={f},selection=multikrum", lambda: fl.Bulyan(num_malicious_nodes=f)),
    ):
        t_ours, rec, t_fl, fl_rec = compare(
            ours_step(spec), lambda r, s=strategy: s().aggregate_train(1, r)[0],
            1 if spec.startswith("bulyan") else reps, flower_replies,  # Flower's Bulyan is slow
        )
        check(rec, fl_rec, spec)
        target = "informational (1 rep)" if spec.startswith("bulyan") else "no slower"
        rows.append((f"{spec}: whole step vs Flower aggregate_train", t_ours, t_fl, target))

    # legacy Krum on plain ndarrays (no message decode on either side: our kernel from a batch)
    results = [(list(split(deltas[i], sizes).values()), int(counts[i])) for i in range(n)]
    t_ours_k, _, t_legacy, _ = compare(
        ours_step(f"krum:f={f}"), lambda: legacy.aggregate_krum(results, f, 0), legacy_reps)
    t_ours_mk, _, t_legacy_m, _ = compare(
        ours_step(f"multi_krum:f={f},m={n - f}"), lambda: legacy.aggregate_krum(results, f, n - f),
        legacy_reps)
    rows.append((f"krum:f={f}: whole step vs legacy aggregate_krum", t_ours_k, t_legacy, "informational (issue 4 asked >= 20x)"))
    rows.append((f"multi_krum: whole step vs legacy aggregate_krum(to_keep={n - f})", t_ours_mk,
                 t_legacy_m, "informational (issue 4 asked >= 20x)"))

    # rules without a Flower counterpart, against our own mean step
    root = (0.01 * rng.standard_normal(d)).astype(np.float32)
    for spec, extra in (("geometric_median", None), ("centered_clipping:tau=5", None),
                        ("norm_bounding:max_norm=5", None), ("fltrust", root)):
        t_ours, _, t_m, _ = compare(ours_step(spec, extra), ours_step("mean"), reps)
        target = "informational"
        rows.append((f"{spec}: whole step vs fedsilo mean step", t_ours, t_m, target))

    rows.append(("(mean step / bandwidth baseline)", t_mean, t_bw, "informational"))
    rows.extend((f"note: {note}", 0.0, None, "") for note in notes)
    return rows


def render(all_rows: dict[int, list], d: int, reps: int, command: str, load: str,
           gap_ms: float = 20.0) -> str:
    lines = [
        "## Aggregation speed (issue 4, point 7; issue 22, point 3)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), numpy {np.__version__}, "
        f"flwr {flwr.__version__}, Python {platform.python_version()}. d = {d:,} float32 "
        f"(5 layers for Flower), median of {reps} repetitions, fedsilo and reference run "
        f"alternately (legacy Krum: --legacy-reps repetitions). Load average at start/end: {load}.",
        "Whole step = reply Messages -> screen + decode once -> aggregate -> server step "
        "(FedAvg, lr=1) -> encode once -> new global ArrayRecord. Flower's side is the "
        "strategy's `aggregate_train` on replies carrying the same vectors split into "
        "layers. Every fedsilo result was checked equal to Flower's (rtol 1e-4) in the run.",
        "",
        "Server step (issue 22, point 3) = what `server/round.plain_exchange` does from the "
        "last reply received to the new global model: the replies arrive one by one "
        f"({gap_ms:g} ms apart; a real federation's come seconds apart) and each is digested "
        "as it arrives on a 2-thread pool (`server/reply_digests.py`); the clock starts when "
        "the last reply arrives and covers its digest, `verify_plain` (screen, decode once, "
        "every site's SHA-256 digest compared and its Ed25519 signature verified), the "
        "aggregate, the FedAvg step and the encode. The row below it is the same step with "
        "every digest computed one after another after the last reply (the server before "
        "this change). Flower's `aggregate_train` checks no digest or signature. The "
        "\"whole step\" rows are the kernels' step without the digest and signature checks.",
        "",
        "Where the time goes (fedsilo, n = 50): every kernel is the numpy reference "
        "(`strategies/kernels.py`; the default, nothing compiled). The mean step is one "
        "pass over the rows, tile by tile, for the screening norms and the weighted sum "
        "together (`kernels.norms_and_sum`, behind `UpdateBatch.sq_norms`), plus decoding, "
        "the FedAvg step and the encode. Krum's Gram matrix is one single-threaded float32 "
        "sgemm over the stacked rows (`UpdateBatch.gram`). The median and trimmed mean "
        "sort cache-sized transposed tiles of the stacked rows. The legacy Krum reference "
        "is timed on pre-decoded ndarrays, fedsilo's side includes decoding, screening and "
        "encoding. Flower's BLAS calls run with the default threads, so its Krum/Bulyan "
        "times swing with the load. `FEDSILO_KERNELS=numba` would route the row-streaming "
        "kernels through `strategies/fused.py` (not used here).",
        "",
    ]
    for n, rows in all_rows.items():
        lines += [f"### n = {n} updates", "",
                  "| comparison | fedsilo (s) | reference (s) | ratio ref/fedsilo | target |",
                  "|---|---:|---:|---:|---|"]
        for label, ours, ref, target in rows:
            if label.startswith("note: "):
                lines.append(f"| {label} | | | | |")
            elif ref is None:
                lines.append(f"| {label} | {ours:.4f} | | | {target} |")
            elif label.startswith("("):
                lines.append(f"| {label} | {ours:.4f} | {ref:.4f} | {ours / ref:.2f}x of baseline | {target} |")
            elif "vs fedsilo mean" in label:
                lines.append(f"| {label} | {ours:.4f} | {ref:.4f} | {ours / ref:.2f}x of mean | {target} |")
            else:
                lines.append(f"| {label} | {ours:.4f} | {ref:.4f} | {ref / ours:.1f}x faster | {target} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50], help="numbers of updates")
    parser.add_argument("--d", type=int, default=1_000_000, help="values per update")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    parser.add_argument("--legacy-reps", type=int, default=1, help="repetitions of the slow legacy Krum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-only", action="store_true",
                        help="only the bandwidth baseline and the mean rows (kernel and server step)")
    parser.add_argument("--arrival-gap-ms", type=float, default=20.0,
                        help="time between two replies' arrivals in the server-step rows "
                             "(a real federation's replies come seconds apart)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    args = parser.parse_args()
    command = "python benchmarks/bench_aggregation_speed.py " + " ".join(sys.argv[1:])
    load_start = os.getloadavg()[0]
    all_rows = {}
    for n in args.n:
        print(f"n={n} ...", flush=True)
        all_rows[n] = run(n, args.d, args.reps, args.legacy_reps, args.seed,
                          args.arrival_gap_ms / 1000, args.mean_only)
        gc.collect()
        if args.out:  # keep what is done if a later n fails
            load = f"{load_start:.1f} / {os.getloadavg()[0]:.1f} (2 cores, shared with other jobs)"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(render(all_rows, args.d, args.reps, command, load,
                                       args.arrival_gap_ms) + "\n")
    load = f"{load_start:.1f} / {os.getloadavg()[0]:.1f} (2 cores, shared with other jobs)"
    text = render(all_rows, args.d, args.reps, command, load, args.arrival_gap_ms)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

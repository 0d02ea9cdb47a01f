"""Benchmark: `fedsilo lineage verify` on a synthetic chain (default 10,000 rounds x 50 sites).

Target (issue 22, point 4): default-mode verify <= 2 s wall on this 2-core machine. The chain
is in the chained format: each site's contributions form a per-site attestation chain
(``fedsilo.contribution/2``, each naming the site's previous attestation). Default mode
recomputes every digest and link (records and site chains) and checks the server's
signature on the head record and each site chain's last attestation (51 signatures here);
``--all-signatures`` checks every signature (500,000 site + 10,002 server). Both are timed,
alternating (default, all, default, ...), with two references measured in the same process:

* the Ed25519 floor: ``cryptography``'s raw ``Ed25519PublicKey.verify`` throughput (on a
  sample, scaled to the chain's signature count, ``--workers`` threads);
* the parse floor: reading every row from SQLite, SHA-256 over the signed bytes and
  ``orjson.loads`` of them (what any verifier of this format must at least do).

Each figure is given as wall time and as CPU time of this process (all threads;
``time.process_time``) and its children (the forked half of a two-process verify): on a
shared machine the wall time depends on what else runs, the CPU time much less. Default mode
is timed as a user runs it (a long chain: two processes, ``fedsilo.lineage.split``) and
in one process (``processes=1``), alternating.

Usage::

    python benchmarks/bench_lineage_verify.py [--rounds 10000] [--sites 50] [--repeats 3] \
        [--out benchmarks/results/lineage.md]

The synthetic run is built once (real keys, real signatures; ~5 min at 10,000 x 50 on a
loaded machine) and cached in ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsilo.lineage import (
    LineageWriter,
    load_or_create_key,
    read_chain,
    record_from_dict,
    verify_run,
)
from fedsilo.lineage.synthetic import build_synthetic_run

TARGET_S = 2.0


def build(cache: Path, rounds: int, sites: int) -> float:
    """Build (or reuse) the synthetic run; returns the build time (0 if cached)."""
    marker = cache / "complete"
    if marker.exists():
        return 0.0
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    build_synthetic_run(cache, rounds=rounds, sites=sites, dim=4, ledgers=False, durable=False)
    marker.write_text("ok\n")
    return time.perf_counter() - start


@dataclass
class Timing:
    """Wall-clock and process CPU seconds (all threads) of one measurement."""

    wall: float
    cpu: float

    def scaled(self, factor: float) -> Timing:
        return Timing(self.wall * factor, self.cpu * factor)


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children (the
    forked half of a two-process verify)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


@contextmanager
def measure(into: list[Timing]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield
    into.append(Timing(time.perf_counter() - wall, cpu_seconds() - cpu))


def ed25519_floor(count: int, workers: int, sample: int = 20_000) -> tuple[Timing, Timing]:
    """Raw Ed25519 verify of ``count`` signatures with 1 and ``workers`` threads, measured on
    ``sample`` signatures and scaled."""
    keys = [Ed25519PrivateKey.generate() for _ in range(50)]
    jobs = []
    for i in range(sample):
        key = keys[i % 50]
        message = b'{"data_fingerprint":"sha256:%064d","round":%d}' % (i, i)
        jobs.append((key.public_key(), key.sign(message), message))

    def run(chunk: list) -> None:
        for public, signature, message in chunk:
            public.verify(signature, message)

    out: list[Timing] = []
    with measure(out):
        run(jobs)
    chunks = [jobs[i::workers] for i in range(workers)]
    with measure(out), ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, chunks))
    return out[0].scaled(count / sample), out[1].scaled(count / sample)


def parse_floor(db: Path) -> tuple[Timing, int]:
    """Read all rows, SHA-256 and orjson.loads them; returns the timing and the signed bytes."""
    out: list[Timing] = []
    total = 0
    with measure(out):
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        for (signed,) in conn.execute("SELECT signed FROM records ORDER BY seq"):
            data = signed.encode()
            total += len(data)
            hashlib.sha256(data).digest()
            orjson.loads(signed)
        conn.close()
    return out[0], total


def append_cost(tmp: Path, sites: int, rounds: int = 100) -> Timing:
    """Milliseconds (wall, CPU) per durable ``LineageWriter.append`` of one
    ``sites``-contribution round (a small synthetic run's records re-appended to a fresh,
    fsync-on store)."""
    shutil.rmtree(tmp, ignore_errors=True)
    build_synthetic_run(tmp, rounds=rounds, sites=sites, dim=4, ledgers=False, durable=False)
    records = [record_from_dict(e["type"], e["body"]) for e in read_chain(tmp / "lineage.sqlite")]
    key = load_or_create_key(tmp / "keys" / "server.pem")
    out: list[Timing] = []
    with measure(out), LineageWriter.create(tmp / "again.sqlite", key) as writer:
        for record in records:
            writer.append(record)
    shutil.rmtree(tmp, ignore_errors=True)
    return out[0].scaled(1e3 / len(records))


def timed_verify(run_dir: Path, **kwargs: object) -> tuple[Timing, str, int]:
    """One verify: its timing, summary and the processes it used."""
    out: list[Timing] = []
    with measure(out):
        report = verify_run(run_dir, **kwargs)  # type: ignore[arg-type]
    if not report.ok:
        raise SystemExit(f"verify failed: {report.summary}")
    return out[0], report.summary, report.processes


def timed_cli(*args: str) -> Timing:
    """One ``fedsilo lineage ...`` command as a user runs it (a fresh process: start-up,
    imports, verify, exit); CPU includes the child's."""
    command = [sys.executable, "-c", "from fedsilo.cli import main; raise SystemExit(main())",
               "lineage", *args]
    out: list[Timing] = []
    with measure(out):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
    return out[0]


def row(name: str, t: Timing, reference: str) -> str:
    return f"| {name} | {t.wall:.1f} | {t.cpu:.1f} | {t.wall / TARGET_S:.1f}x | {reference} |"


def median(ts: list[Timing]) -> Timing:
    ordered = sorted(ts, key=lambda t: t.wall)
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="default-mode runs")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append a markdown section")
    args = parser.parse_args()
    cache = args.cache_dir or Path(f"/tmp/fedsilo-bench-lineage-chained-{args.rounds}x{args.sites}")

    build_s = build(cache, args.rounds, args.sites)
    db = cache / "lineage.sqlite"
    load_before = os.getloadavg()
    records = args.rounds + 2
    signatures = args.rounds * args.sites + records
    defaults: list[Timing] = []
    singles: list[Timing] = []
    summary = all_summary = ""
    all_sig: Timing | None = None
    processes = 1
    clis: list[Timing] = []
    starts: list[Timing] = []
    for k in range(args.repeats):  # alternate: default, one process, CLI, all, default, ...
        t, summary, processes = timed_verify(cache, workers=args.workers)
        defaults.append(t)
        singles.append(timed_verify(cache, workers=args.workers, processes=1)[0])
        clis.append(timed_cli("verify", str(cache)))
        starts.append(timed_cli("verify", "--help"))
        if k == 0:
            all_sig, all_summary, _ = timed_verify(cache, workers=args.workers,
                                                   all_signatures=True)
    assert all_sig is not None
    _, floor_n = ed25519_floor(signatures, args.workers, sample=5_000)
    parse, nbytes = parse_floor(db)
    append_ms = append_cost(cache.parent / f"{cache.name}-append", args.sites)
    load_after = os.getloadavg()

    best, mid = min(defaults, key=lambda t: t.wall), median(defaults)
    one_best, one_mid = min(singles, key=lambda t: t.wall), median(singles)
    cli_best, cli_mid = min(clis, key=lambda t: t.wall), median(clis)
    start = median(starts)
    how = f"{processes} process{'es' if processes > 1 else ''}"
    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    table = [
        "| measurement | wall s | CPU s | wall vs target 2 s | note |",
        "|---|---:|---:|---:|---|",
        row(f"`verify` default mode ({how}), best of {args.repeats}", best,
            f"{best.cpu / parse.cpu:.2f}x the parse floor (CPU)"),
        row(f"`verify` default mode ({how}), median of {args.repeats}", mid,
            "runs: " + ", ".join(f"{t.wall:.2f}/{t.cpu:.2f}" for t in defaults)
            + " (wall/CPU s)"),
        row(f"`verify` default mode, one process (`processes=1`), best of {args.repeats}",
            one_best, f"{one_best.cpu / parse.cpu:.2f}x the parse floor (CPU)"),
        row(f"`verify` default mode, one process, median of {args.repeats}", one_mid,
            "runs: " + ", ".join(f"{t.wall:.2f}/{t.cpu:.2f}" for t in singles)
            + " (wall/CPU s)"),
        row(f"`fedsilo lineage verify RUN_DIR` (CLI, a fresh process), best of {args.repeats}",
            cli_best, "as a user runs it: start-up and imports, verify, exit"),
        row(f"`fedsilo lineage verify RUN_DIR` (CLI), median of {args.repeats}", cli_mid,
            "runs: " + ", ".join(f"{t.wall:.2f}/{t.cpu:.2f}" for t in clis) + " (wall/CPU s)"),
        row(f"reference: `fedsilo lineage verify --help` (CLI start-up), median of "
            f"{args.repeats}", start, "the CLI's imports, no chain read"),
        row(f"`verify --all-signatures`, {args.workers} threads", all_sig,
            f"{all_sig.cpu / (floor_n.cpu + parse.cpu):.2f}x (Ed25519 + parse floor, CPU)"),
        row(f"reference: raw Ed25519 verify x {signatures:,}, {args.workers} threads", floor_n,
            f"{floor_n.cpu / signatures * 1e6:.0f} us CPU/sig"),
        row("reference: read + SHA-256 + orjson.loads all rows", parse,
            f"{nbytes / parse.cpu / 1e6:.0f} MB/s CPU"),
    ]
    lines = [
        f"### lineage verify: {args.rounds:,} rounds x {args.sites} sites (chained attestations)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"Python {platform.python_version()}; load average (`uptime`, 1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after.  ",
        f"Chain: {records:,} records, {nbytes / 1e6:.0f} MB of signed JSON, "
        f"{db.stat().st_size / 1e6:.0f} MB SQLite; {signatures:,} Ed25519 signatures in all "
        f"({args.rounds * args.sites:,} site + {records:,} server)"
        + (f"; built in {build_s:.0f} s." if build_s else " (cached build)."),
        "",
        *table,
        "",
        f"Writer cost (for the per-round overhead): one durable `LineageWriter.append` of a "
        f"{args.sites}-contribution round record takes {append_ms.wall:.1f} ms wall, "
        f"{append_ms.cpu:.1f} ms CPU.",
        "",
        f"Default summary: `{summary}`",
        "",
        f"`--all-signatures` summary: `{all_summary}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

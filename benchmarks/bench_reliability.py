"""Reliability figures (issue 19, point 7): replies fuzzed, crash points, tamper classes.

Runs the three test modules that carry these figures, each as its own pytest process,
and writes ``benchmarks/results/reliability.md``:

- ``tests/integration/test_fuzz_replies.py``: hypothesis-generated malformed and extreme
  replies through the server's real round (``fedsilo.server.round.run_round``); it prints how
  many replies it fuzzed and how many reply kinds it reached;
- ``tests/integration/test_crash_points.py``: a SIGKILL at every interruption point the
  server names, then ``--resume``; each case checks the uninterrupted model digest and a
  chain that ``lineage verify`` accepts;
- ``tests/lineage/test_lineage_tamper.py``: every tamper class against a signed chain;
  each mutation must be detected, naming the record.

    python benchmarks/bench_reliability.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "fuzz": "tests/integration/test_fuzz_replies.py",
    "crash": "tests/integration/test_crash_points.py",
    "tamper": "tests/lineage/test_lineage_tamper.py",
}


def run_module(path: str) -> tuple[str, float, int]:
    """Run one test module; return its output, wall time and exit code."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", path],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr, time.perf_counter() - t0, proc.returncode


def passed_failed(output: str) -> tuple[int, int]:
    """pytest's closing counts."""
    passed = re.search(r"(\d+) passed", output)
    failed = re.search(r"(\d+) failed", output)
    return (int(passed.group(1)) if passed else 0, int(failed.group(1)) if failed else 0)


def main() -> int:
    load = os.getloadavg()[0]
    outputs = {name: run_module(path) for name, path in MODULES.items()}
    rows = []
    fuzz_out, fuzz_wall, fuzz_rc = outputs["fuzz"]
    fuzz = re.search(r"fuzzed (\d+) replies in (\d+) rounds; kinds: (\d+) of (\d+)", fuzz_out)
    if fuzz:
        replies, rounds, kinds, all_kinds = fuzz.groups()
        rows.append(f"| replies fuzzed through the real round | {replies} replies in {rounds} rounds, "
                    f"{kinds} of {all_kinds} reply kinds | {'all held' if fuzz_rc == 0 else 'FAILED'} "
                    f"| {fuzz_wall:.0f} s |")
    crash_out, crash_wall, crash_rc = outputs["crash"]
    passed, failed = passed_failed(crash_out)
    from fedsilo.server.faults import POINTS

    rows.append(f"| crash points (SIGKILL, then `--resume`) | {len(POINTS)} fault points "
                f"({', '.join(POINTS)}); {passed} test cases passed, {failed} failed | "
                f"{'uninterrupted digest, chain verifies' if crash_rc == 0 else 'FAILED'} "
                f"| {crash_wall:.0f} s |")
    tamper_out, tamper_wall, tamper_rc = outputs["tamper"]
    tamper = re.search(r"tamper suite: (\d+) mutation classes, (\d+) mutations", tamper_out)
    if tamper:
        classes, mutations = tamper.groups()
        rows.append(f"| lineage tamper classes | {classes} classes, {mutations} mutations | "
                    f"{'all detected' if tamper_rc == 0 else 'FAILED'} | {tamper_wall:.0f} s |")
    text = "\n".join([
        "## Reliability (issue 19, point 7)",
        "",
        "`python benchmarks/bench_reliability.py` (each module its own pytest process; "
        f"load average {load:.1f} at the start)",
        "",
        "| what | count | outcome | wall |",
        "|---|---|---|---|",
        *rows,
        "",
        "Every fuzzed round asserts: no exception escapes, the round record is valid, every "
        "rejection has a one-line reason, the model is finite and byte-identical to the model "
        "aggregated from the valid replies alone. Every crash case resumes to the model digest "
        "of the uninterrupted run and a chain that `fedsilo lineage verify` accepts; nothing "
        "written before the crash is lost.",
        "",
    ])
    out = ROOT / "benchmarks" / "results" / "reliability.md"
    out.write_text(text)
    print(text)
    return 0 if all(rc == 0 for _o, _w, rc in outputs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

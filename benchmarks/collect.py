"""Assemble BENCHMARKS.md from the per-area result files in benchmarks/results/.

Each benchmark script writes its own section (with the command that produced it) to
benchmarks/results/<area>.md; this script concatenates them in a fixed order.

    python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
ORDER = ["quality", "tasks", "overhead", "lineage", "aggregation", "robustness", "dp",
         "dp_simulate", "secagg", "secagg_rounds", "deploy", "reliability"]

HEADER = """# Benchmarks

Measured on this project's machines: 2 cores, 24 GiB, shared with other jobs (absolute
times are noisy; every comparison is against a reference measured in the same run, and
the ratio is what to read). Each section gives the command that produced it; regenerate
this file with `python benchmarks/collect.py` after re-running them.
"""


def main() -> None:
    parts = [HEADER]
    results = ROOT / "results"
    names = [n for n in ORDER if (results / f"{n}.md").exists()]
    names += sorted(p.stem for p in results.glob("*.md") if p.stem not in ORDER)
    for name in names:
        parts.append((results / f"{name}.md").read_text().strip() + "\n")
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()

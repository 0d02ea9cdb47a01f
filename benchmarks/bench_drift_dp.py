"""Benchmark: what the drift check sees under client-level DP (issue 23, point 2).

Under ``[dp]`` the server releases only the sites' summed frequency profiles, once, with
Gaussian noise of std ``z * sqrt(F + 2)`` per count (`fedsilo.privacy.profile_release`),
and compares that with the baseline run's release (`fedsilo.governance.drift`, the Wald
gate). This measures, with the same functions a run calls and synthetic sites (50 rows,
13 standard normal features like wine's, 3 classes):

* **false flags**: two releases of one distribution, ``--null-runs`` pairs at 300 sites;
* **detection**: every site's features shifted by ``shift`` standard deviations in the
  new run, found (a ``data_drift`` flag) in how many of ``--runs`` pairs, per number of
  sites.

Under record-level DP each site noises its own counts (`local_release`, std
``z * sqrt(F + 2)``, default z = 2): **per-site detection**, one site of ``rows`` rows
against its own noisy baseline, every feature shifted by 0.5 or 1 standard deviation.

It runs in seconds (numpy only: no federation is started; `tests/governance/
test_drift_dp.py` runs the release in real runs).

Usage::

    python benchmarks/bench_drift_dp.py [--noise-multiplier 5] [--runs 10] [--null-runs 200]
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

import numpy as np

from fedsilo.governance.drift import NOISE, ROWS, drift_findings
from fedsilo.governance.flags import MonitorConfig
from fedsilo.privacy.accounting import ClientLevelAccountant
from fedsilo.privacy.profile_release import local_release, release
from fedsilo.tasks.profile import frequency_profile, histogram_profile

FEATURES, ROWS_PER_SITE, CLASSES = 13, 50, 3


def released(rng: np.random.Generator, sites: int, z: float, shift: float = 0.0
             ) -> dict[str, Any]:
    """The federation's noisy profile, as `fedsilo.server.data_profiles` records it."""
    freqs = [frequency_profile(histogram_profile(
        rng.normal(shift, 1.0, (ROWS_PER_SITE, FEATURES)),
        rng.integers(0, CLASSES, ROWS_PER_SITE), CLASSES)) for _ in range(sites)]
    total, variance = release(freqs, None, z, lambda s, n: rng.normal(0.0, s, n))
    return {**total, ROWS: np.array([float(sites)]), NOISE: np.array([variance])}


def site_released(rng: np.random.Generator, rows: int, z: float, shift: float = 0.0
                  ) -> dict[str, Any]:
    """One site's profile, noised at the site (record-level DP)."""
    profile = histogram_profile(rng.normal(shift, 1.0, (rows, FEATURES)),
                                rng.integers(0, CLASSES, rows), CLASSES)
    noisy, variance = local_release(profile, z, lambda s, n: rng.normal(0.0, s, n))
    return {**noisy, NOISE: np.array([variance])}


def site_drifted(now: dict[str, Any], before: dict[str, Any]) -> bool:
    found = drift_findings({"s": now}, now, {"run_id": "b", "sites": {"s": before},
                                             "federation": before}, MonitorConfig())
    return any(code == "data_drift" for code, _, _ in found)


def drifted(now: dict[str, Any], before: dict[str, Any]) -> bool:
    found = drift_findings(None, now, {"run_id": "b", "sites": {}, "federation": before},
                           MonitorConfig())
    return any(code == "data_drift" for code, _, _ in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise-multiplier", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--null-runs", type=int, default=200)
    parser.add_argument("--record-noise-multiplier", type=float, default=2.0)
    args = parser.parse_args()
    z, rng = args.noise_multiplier, np.random.default_rng(0)
    epsilon = ClientLevelAccountant(noise_multiplier=1.0, sample_rate=1.0, delta=1e-5)
    epsilon.release(z)
    print(f"machine: {platform.machine()}, load average {os.getloadavg()[0]:.2f}; "
          f"z = {z:g} (the release alone: epsilon {epsilon.get_epsilon():.3f} at delta 1e-5), "
          f"noise std {z * np.sqrt(FEATURES + 2):.1f} per count\n")
    false = sum(drifted(released(rng, 300, z), released(rng, 300, z))
                for _ in range(args.null_runs))
    print(f"false flags: {false} of {args.null_runs} pairs of releases of one distribution "
          "(300 sites)\n")
    sizes = (10, 100, 300, 1000, 3000)
    print("| shift (std) | " + " | ".join(f"{s} sites" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for shift in (0.25, 0.5, 1.0):
        cells = [sum(drifted(released(rng, s, z, shift), released(rng, s, z))
                     for _ in range(args.runs)) for s in sizes]
        print(f"| {shift} | " + " | ".join(f"{c}/{args.runs}" for c in cells) + " |")
    zr, rows = args.record_noise_multiplier, (100, 1000, 10000)
    false = sum(site_drifted(site_released(rng, 1000, zr), site_released(rng, 1000, zr))
                for _ in range(args.null_runs))
    print(f"\nrecord level, z = {zr:g} (noise std {zr * np.sqrt(FEATURES + 2):.1f} per count): "
          f"false flags {false} of {args.null_runs} (a 1,000-row site against itself)\n")
    print("| shift (std) | " + " | ".join(f"{r} rows" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for shift in (0.5, 1.0):
        cells = [sum(site_drifted(site_released(rng, r, zr, shift), site_released(rng, r, zr))
                     for _ in range(args.runs)) for r in rows]
        print(f"| {shift} | " + " | ".join(f"{c}/{args.runs}" for c in cells) + " |")


if __name__ == "__main__":
    main()

"""Federated statistics of a Task: per-site sums, their wire form and the server's sum.

A site's `Task.site_statistics` returns named arrays of sums (counts, sums, sums of
squares...). They travel as JSON (float64 values, exact in JSON's shortest round-trip
form), the server adds them up array by array (numpy, whole arrays) and sends the summed
dict back with every train and evaluate message, where each site builds its Trainer
with it. The summed statistics' digest (and, when small, the values) go into the genesis
record's ``task`` field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from fedsilo.common.errors import FedsiloError

STATISTICS_RECORD = "fedsilo.task_statistics"
"""Name of the ConfigRecord carrying statistics (the site's, or the federation's sum)."""
STATISTICS_KEY = "statistics"
# Summed statistics up to this many values are written into lineage themselves; larger
# ones by digest only (lineage records stay small).
RECORD_VALUES_LIMIT = 4096


class StatisticsError(FedsiloError, ValueError):
    """Statistics that cannot be read or summed (one line, names the site and array)."""


def encode_statistics(stats: Mapping[str, np.ndarray]) -> str:
    return json.dumps({str(k): {"shape": list(np.shape(v)),
                                "values": np.asarray(v, dtype=np.float64).ravel().tolist()}
                       for k, v in stats.items()}, sort_keys=True)


def decode_statistics(text: str, where: str = "statistics") -> dict[str, np.ndarray]:
    try:
        raw = json.loads(text)
        out = {str(k): np.asarray(v["values"], dtype=np.float64).reshape(v["shape"])
               for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StatisticsError(f"{where}: malformed statistics ({exc})") from None
    for name, arr in out.items():
        if not np.all(np.isfinite(arr)):
            raise StatisticsError(f"{where}: statistics {name!r} has non-finite values")
    return out


def sum_statistics(per_site: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """The sum over sites, array by array; every site must send the same names and shapes."""
    if not per_site:
        raise StatisticsError("statistics: no site sent any")
    first_site, first = per_site[0]
    total = {k: np.array(v, dtype=np.float64) for k, v in first.items()}
    for site, stats in per_site[1:]:
        if set(stats) != set(total):
            raise StatisticsError(f"statistics: site {site} sent {sorted(stats)}, site "
                                  f"{first_site} sent {sorted(total)}")
        for name, value in stats.items():
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != total[name].shape:
                raise StatisticsError(f"statistics: site {site}: {name!r} has shape {arr.shape}, "
                                      f"site {first_site}'s has {total[name].shape}")
            total[name] += arr
    return total


def record_form(stats: Mapping[str, np.ndarray], digest: str, sites: int) -> dict[str, object]:
    """What lineage keeps of the summed statistics (values only when small)."""
    out: dict[str, object] = {"digest": digest, "sites": sites}
    if sum(int(np.size(v)) for v in stats.values()) <= RECORD_VALUES_LIMIT:
        out["values"] = {k: np.asarray(v).tolist() for k, v in sorted(stats.items())}
    return out

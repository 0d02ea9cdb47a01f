"""Federated statistics of a Task: per-site sums, their wire form and the server's sum.

A site's `Task.site_statistics` returns named arrays of sums (counts, sums, sums of
squares...). They travel as JSON (float64 values, exact in JSON's shortest round-trip
form), the server adds them up array by array (numpy, whole arrays) and sends the summed
dict back with every train and evaluate message, where each site builds its Trainer
with it. The summed statistics' digest (and, when small, the values) go into the genesis
record's ``task`` field.

Under SecAgg+ (`fedsilo.server.task_round.query_statistics` with a session) no site's
sums leave it in clear: a clear query asks only for their layout (names and shapes,
`encode_layout`), then one SecAgg+ exchange sums the vectors `secure_vector` makes of each
site's sums, and `secure_sum` reads the total back. The encoding is exact integer
arithmetic:

* each value is rounded to a fixed-point integer with `FRACTION_BITS` (32) fractional
  bits, written in two's complement over `WORD_BITS` (128) bits and cut into `LIMBS` (8)
  limbs of `LIMB_BITS` (16) bits, one SecAgg+ coordinate each;
* a limb ``u`` travels as ``u - SECURE_CLIP`` with the exchange's ``clip_range`` =
  `SECURE_CLIP` = (2^16 - 1) / 2, ``bits`` = 16 and ``max_weight`` = 1 (a site's weight
  is 1): the quantiser's scale is then exactly 1, so every limb is quantised to itself
  (no rounding, no clipping) and the ring (2^32) holds the sum of up to 65 537 sites'
  limbs without wrapping;
* the server adds the limb sums back up with carries, mod 2^128, and divides by 2^32.

Precision: a site rounds each value to a multiple of 2^-32 (error at most 2^-33), so the
secure sum over n sites is within ``n * 2^-33`` of the exact sum of the values the sites
computed, plus float64's own rounding of the result (relative 2^-53). A site refuses a
value of magnitude 2^63 or more (`MAX_ABS`): with up to 2^31 sites the sum stays inside
the 128-bit word.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from fedsilo.common.errors import FedsiloError

STATISTICS_RECORD = "fedsilo.task_statistics"
"""Name of the ConfigRecord carrying statistics (the site's, or the federation's sum)."""
STATISTICS_KEY = "statistics"
LAYOUT_KEY = "layout"
"""Key of a statistics record holding only the layout (names and shapes) of the sums."""
SECURE_KEY = "secagg"
"""Federation key of a statistics query: the run sums statistics under SecAgg+ (a site
then sends their layout only, never their values in clear)."""
SECURE_RUN_SUFFIX = "#statistics"
"""Appended to the run id for the statistics' SecAgg+ exchange (its keys, graph and the
site's replay protection are apart from the training rounds')."""
SECURE_MESSAGE_TYPES = {s: f"query.secagg_statistics_{s}" for s in ("setup", "share", "masked",
                                                                      "unmask")}
"""Message types of the statistics' SecAgg+ stages (a site keeps their state apart)."""
# Summed statistics up to this many values are written into lineage themselves; larger
# ones by digest only (lineage records stay small).
RECORD_VALUES_LIMIT = 4096


class StatisticsError(FedsiloError, ValueError):
    """Statistics that cannot be read or summed (one line, names the site and array)."""


# ---------------------------------------------------------------- the secure encoding
FRACTION_BITS = 32
WORD_BITS = 128
LIMB_BITS = 16
LIMBS = WORD_BITS // LIMB_BITS
SECURE_CLIP = ((1 << LIMB_BITS) - 1) / 2.0  # quantiser scale (2^16 - 1) / (2c) = 1 exactly
MAX_ABS = 2.0 ** 63
SECURE_MAX_SITES = ((1 << 32) - 1) // ((1 << LIMB_BITS) - 1)  # limb sums fit the 2^32 ring
_MASK = (1 << WORD_BITS) - 1

Layout = list[tuple[str, tuple[int, ...]]]


def layout_of(stats: Mapping[str, np.ndarray]) -> Layout:
    """The names and shapes of ``stats``, sorted by name: what a site reveals of its sums
    before a secure exchange."""
    return [(str(k), tuple(int(n) for n in np.shape(v))) for k, v in sorted(stats.items())]


def encode_layout(layout: Layout) -> str:
    """A layout as JSON (``[[name, shape], ...]``)."""
    return json.dumps([[name, list(shape)] for name, shape in layout])


def decode_layout(text: str, where: str = "statistics") -> Layout:
    """Inverse of `encode_layout`; `StatisticsError` naming ``where`` when malformed."""
    try:
        out = [(str(name), tuple(int(n) for n in shape)) for name, shape in json.loads(text)]
    except (ValueError, TypeError) as exc:
        raise StatisticsError(f"{where}: malformed statistics layout ({exc})") from None
    if any(n < 0 for _, shape in out for n in shape):
        raise StatisticsError(f"{where}: malformed statistics layout (negative size)")
    return out


def secure_length(layout: Layout) -> int:
    """Length of the SecAgg+ vector of statistics with ``layout`` (`LIMBS` per value)."""
    return LIMBS * sum(int(np.prod(shape, dtype=np.int64)) for _, shape in layout)


def secure_vector(stats: Mapping[str, np.ndarray], layout: Layout, where: str = "statistics"
                  ) -> np.ndarray:
    """A site's sums as its SecAgg+ input: every value as `LIMBS` limbs minus
    `SECURE_CLIP` (see the module docstring); `StatisticsError` when ``stats`` does not
    have ``layout`` or a value is not finite or too large."""
    if layout_of(stats) != layout:
        raise StatisticsError(f"{where}: statistics {layout_of(stats)} differ from the "
                              f"announced layout {layout}")
    values = np.concatenate([np.asarray(stats[name], dtype=np.float64).ravel()
                             for name, _ in layout]) if layout else np.zeros(0)
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= MAX_ABS):
        raise StatisticsError(f"{where}: statistics must be finite and below 2^63 in "
                              "magnitude to be summed securely")
    fixed = np.rint(np.ldexp(values, FRACTION_BITS))  # exact: a power-of-two scale
    limbs = np.empty((values.size, LIMBS), dtype=np.float64)
    for i, v in enumerate(fixed.tolist()):  # Python ints: 128-bit two's complement
        word = int(v) & _MASK
        limbs[i] = [(word >> (LIMB_BITS * j)) & ((1 << LIMB_BITS) - 1) for j in range(LIMBS)]
    return (limbs - SECURE_CLIP).ravel()


def secure_sum(total: np.ndarray, sites: int, layout: Layout) -> dict[str, np.ndarray]:
    """The summed statistics from the SecAgg+ sum ``total`` (float64, as dequantised with
    `SECURE_CLIP`) of ``sites`` sites' `secure_vector`; `StatisticsError` if it is not a
    sum of limbs."""
    total = np.asarray(total, dtype=np.float64)
    if total.shape != (secure_length(layout),):
        raise StatisticsError(f"statistics: secure sum has {total.size} values, expected "
                              f"{secure_length(layout)}")
    shifted = total + sites * SECURE_CLIP  # exact: integers and halves below 2^33
    sums = np.rint(shifted)
    if not np.all(np.isfinite(sums)) or np.any(sums < 0) \
            or np.any(sums > sites * ((1 << LIMB_BITS) - 1)) or np.any(shifted != sums):
        raise StatisticsError("statistics: the secure sum is not a sum of limbs")
    values = []
    for row in sums.reshape(-1, LIMBS).astype(np.int64).tolist():
        word = sum(int(s) << (LIMB_BITS * j) for j, s in enumerate(row)) & _MASK
        if word >> (WORD_BITS - 1):
            word -= 1 << WORD_BITS
        values.append(word / (1 << FRACTION_BITS))  # int / int: correctly rounded
    flat = np.asarray(values, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    at = 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = flat[at:at + size].reshape(shape)
        at += size
    return out


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

"""SecAgg+ parameters and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

RING_BITS = 32
"""Masked sums live in the native uint32 ring Z_{2^32} (numpy wrap-around arithmetic)."""


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of one SecAgg+ round.

    Parameters
    ----------
    degree:
        Number of neighbours of each site in the communication graph. ``None`` picks
        ``2 * ceil(log2 n)`` (O(log n), Bell et al. 2020); any value >= n - 1 gives the
        complete graph, i.e. the original SecAgg (Bonawitz et al. 2017). The default
        tolerates about 10% random dropout; for more, pick the degree with
        `fedsilo.privacy.secagg.suggest_degree` (e.g. n = 1000 at 30% needs k = 130).
    threshold:
        Shamir reconstruction threshold t, counted over a site's neighbourhood
        (its neighbours plus itself, k + 1 holders). ``None`` picks the smallest
        strict majority ``(k + 1) // 2 + 1``. Must be a strict majority: otherwise a
        server could collect both kinds of share of one site.
    clip_range:
        Each coordinate of ``weight / max_weight * delta`` is clipped to
        ``[-clip_range, clip_range]`` before quantisation.
    bits:
        Quantisation levels are ``0 .. 2**bits - 1``; ``n * (2**bits - 1)`` must fit the
        2^32 ring (see `fedsilo.privacy.secagg.quantize.check_no_overflow`).
    max_weight:
        Upper bound W of a site's aggregation weight (e.g. its example count). Sites
        send ``w / W * delta`` and ``w / W`` so the weighted sum and the sum of weights
        are recovered securely.
    """

    degree: int | None = None
    threshold: int | None = None
    clip_range: float = 1.0
    bits: int = 20
    max_weight: float = 1.0

    def validate(self) -> SecAggConfig:
        """Check parameter types and ranges; return self. Raises ValueError naming the field."""
        if self.degree is not None and (not isinstance(self.degree, int) or self.degree < 1):
            raise ValueError(f"secagg.degree: expected an int >= 1 or None, got {self.degree!r}")
        if self.threshold is not None and (
            not isinstance(self.threshold, int) or self.threshold < 2
        ):
            raise ValueError(
                f"secagg.threshold: expected an int >= 2 or None, got {self.threshold!r}"
            )
        if not (isinstance(self.clip_range, int | float) and math.isfinite(self.clip_range)
                and self.clip_range > 0):
            raise ValueError(
                f"secagg.clip_range: expected a finite float > 0, got {self.clip_range!r}"
            )
        if not isinstance(self.bits, int) or not 1 <= self.bits <= RING_BITS - 1:
            raise ValueError(f"secagg.bits: expected an int in [1, 31], got {self.bits!r}")
        if not (isinstance(self.max_weight, int | float) and math.isfinite(self.max_weight)
                and self.max_weight > 0):
            raise ValueError(
                f"secagg.max_weight: expected a finite float > 0, got {self.max_weight!r}"
            )
        return self

    def resolve(self, n: int) -> tuple[int, int]:
        """Effective (degree, threshold) for ``n`` participants (after key advertisement).

        An odd degree with an odd ``n`` has no regular graph and is rounded up by one;
        a degree above ``n - 1`` becomes ``n - 1`` (complete graph).
        """
        if n < 2:
            raise ValueError(f"secagg: need at least 2 participants, got {n}")
        k = self.degree if self.degree is not None else 2 * math.ceil(math.log2(n))
        k = min(k, n - 1)
        if k % 2 == 1 and n % 2 == 1:
            k += 1  # n odd => n - 1 even >= k + 1
        holders = k + 1
        t = self.threshold if self.threshold is not None else holders // 2 + 1
        if not holders // 2 + 1 <= t <= holders:
            raise ValueError(
                f"secagg.threshold: expected a strict majority of the {holders} holders of each "
                f"secret (degree {k} + 1), i.e. in [{holders // 2 + 1}, {holders}], got {t}"
            )
        return k, t

    def resolve_round(self, n_sampled: int, n_keys: int) -> tuple[int, int]:
        """(degree, threshold) of a round that sampled ``n_sampled`` sites, ``n_keys`` of which
        advertised keys. The threshold is fixed by the sampled size (dropping sites never
        lowers it); the degree shrinks to fit ``n_keys``. Raises ValueError when fewer than
        ``threshold`` holders per secret remain possible.
        """
        k0, t = self.resolve(n_sampled)
        if n_keys < 2 or t > n_keys:
            raise ValueError(f"only {n_keys} of {n_sampled} sites remain, threshold is {t}")
        k = min(k0, n_keys - 1)
        if k % 2 == 1 and n_keys % 2 == 1:
            k = k + 1 if k + 1 <= n_keys - 1 else k - 1
        if t > k + 1:  # pragma: no cover - t <= n_keys and k = n_keys - 1 whenever clamped
            raise ValueError(f"threshold {t} exceeds the {k + 1} holders of each secret")
        return k, t

    def to_dict(self) -> dict[str, int | float | None]:
        """Plain dict of the parameters (for lineage and messages)."""
        # not dataclasses.asdict: its recursive deep copy costs 10 us per site and round
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> SecAggConfig:
        """Inverse of `to_dict`; -1 / missing means None for degree and threshold."""
        def opt(key: str) -> int | None:
            v = data.get(key)
            return None if v is None or v == -1 else int(v)  # type: ignore[arg-type]

        return cls(
            degree=opt("degree"),
            threshold=opt("threshold"),
            clip_range=float(data.get("clip_range", 1.0)),  # type: ignore[arg-type]
            bits=int(data.get("bits", 20)),  # type: ignore[call-overload]
            max_weight=float(data.get("max_weight", 1.0)),  # type: ignore[arg-type]
        ).validate()

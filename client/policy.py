"""A site's own policy: what it agrees to take part in, checked on every round."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedsilo.common.protocol import RoundConfig


@dataclass
class SitePolicy:
    """Rules a site enforces before it trains on a round.

    Parameters
    ----------
    server_key_fingerprints : fingerprints of the server signing keys the site accepts
        (empty: any).
    allowed_aggregators, allowed_optimizers : strategy names the site accepts (empty: any).
    max_rounds : the site refuses rounds beyond this number (0: no limit).
    max_epsilon : the site's own privacy ceiling (None: none); enforced with the
        same accountant as the server (see `fedsilo.privacy.site_budget`).
    require_secagg : refuse rounds that are not securely aggregated.
    share_profile : send the site's data profile (counts: rows, per-feature histograms,
        labels) in clear when the server asks for it for its drift check; false: the
        server gets none (under SecAgg+ the profile only enters the federation's sum).
    """

    server_key_fingerprints: list[str] = field(default_factory=list)
    allowed_aggregators: list[str] = field(default_factory=list)
    allowed_optimizers: list[str] = field(default_factory=list)
    max_rounds: int = 0
    max_epsilon: float | None = None
    require_secagg: bool = False
    share_profile: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SitePolicy:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"site policy: unknown keys {unknown}; accepted: {sorted(known)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def refusal(self, round_config: RoundConfig | Mapping[str, Any]) -> str | None:
        """The reason to refuse a round with this config, or None to take part.

        ``round_config``: the round as the server sent it (a `RoundConfig`, or its record
        as a mapping).
        """
        cfg = (round_config if isinstance(round_config, RoundConfig)
               else RoundConfig.from_record(round_config))
        if self.max_rounds and cfg.round > self.max_rounds:
            return f"round {cfg.round} exceeds the site's max_rounds {self.max_rounds}"
        agg = (cfg.aggregator or "").split(":")[0]
        if self.allowed_aggregators and agg not in self.allowed_aggregators:
            return f"aggregator {agg!r} is not in the site's allowed_aggregators {self.allowed_aggregators}"
        opt = (cfg.optimizer or "").split(":")[0]
        if self.allowed_optimizers and opt not in self.allowed_optimizers:
            return f"optimizer {opt!r} is not in the site's allowed_optimizers {self.allowed_optimizers}"
        fp = cfg.server_key_fingerprint or ""
        if self.server_key_fingerprints and fp not in self.server_key_fingerprints:
            return f"server key {fp or '(none)'} is not one the site accepts"
        if self.require_secagg and not cfg.secagg:
            return "the site requires secure aggregation and this round is not securely aggregated"
        return None

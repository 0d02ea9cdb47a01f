"""The round's aggregate and step: from the verified batch to the new global model.

`aggregate` runs the aggregator on the batch (or, under differential privacy, DP's
clip-and-noise, which releases every sampled round, however few updates it has) and
writes each contribution's fate; `step` applies the result through the server optimiser
and never commits a non-finite model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsilo.lineage.fates import Fate
from fedsilo.strategies.base import Aggregator, ServerOptimizer
from fedsilo.strategies.batch import UpdateBatch


def aggregate(batch: UpdateBatch, contributions: list[dict[str, Any]], rejected: dict[str, str],
              *, dp: Any, aggregator: Aggregator, min_sites: int, dim: int
              ) -> tuple[np.ndarray | None, str | None, dict[str, Any] | None]:
    """(the update, or None with the reason; DP's lineage, None without DP).

    Each of ``contributions`` gets its ``fate`` (``accepted``: the update fed the model)
    and the aggregator's own verdict in ``detail.aggregation`` ("clipped", "trimmed",
    "rejected:krum"...), and its ``score`` when the aggregator gives one; a site DP
    rejects goes into ``rejected`` with the reason.
    """
    fates: dict[str, str] = {}
    scores: dict[str, float] = {}
    update = reason = privacy = None
    if dp is not None:
        # Under DP every sampled round is released and accounted, even with few or no
        # updates: skipping it would reveal how many sampled sites answered.
        rows = batch.updates if batch.n else np.zeros((0, dim), np.float32)
        result = dp.aggregate(rows, batch.weights)
        fates = {batch.site_ids[i]: fate for i, fate in result.fates.items()}
        for i, why in result.reasons.items():
            rejected[batch.site_ids[i]] = why
        update, privacy = result.update, result.lineage
    elif batch.n < min_sites:
        reason = f"{batch.n} usable updates; min_sites is {min_sites}"
    else:
        out = aggregator.aggregate(batch)
        fates = dict(zip(batch.site_ids, out.fates, strict=True))
        if out.scores is not None:
            scores = dict(zip(batch.site_ids, (float(s) for s in out.scores), strict=True))
        update = out.update
    for c in contributions:
        fate = fates.get(c["site_id"], "rejected:not aggregated")
        c["fate"] = Fate.of_aggregation(fate)
        c["detail"] = {"aggregation": fate}
        if c["site_id"] in scores:
            c["score"] = scores[c["site_id"]]
    return update, reason, privacy


def step(optimizer: ServerOptimizer, model: np.ndarray, update: np.ndarray
         ) -> tuple[np.ndarray, str | None]:
    """(the new model, None), or (``model``, why the step is not taken) when the update or
    the new model is not finite: the optimiser's state then stays as it was, so that no
    reply, alone or with others, can make the global model non-finite."""
    bad = _non_finite(update)
    if bad:
        return model, f"aggregated update has {bad} non-finite values; global model unchanged"
    state = optimizer.state_dict()  # copies (the optimisers' contract)
    new = optimizer.step(model, update)
    bad = _non_finite(new)
    if bad:
        optimizer.load_state_dict(state)  # a step not taken leaves no trace
        return model, (f"new model would have {bad} non-finite values after the "
                       f"{optimizer.name} step; global model unchanged")
    return new, None


def _non_finite(values: np.ndarray) -> int:
    """How many values are NaN or infinite. Usually one pass: a finite sum means every
    value is finite (NaN and Inf propagate); only when the sum is not (non-finite values,
    or finite ones whose float32 sum overflowed) are the values counted one by one."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(values)):
            return 0
    return int(np.size(values) - np.count_nonzero(np.isfinite(values)))

"""FLTrust (Cao et al. 2021): trust scores from a server root update."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..base import AggregateResult, Aggregator, Param, SettingError
from ..batch import UpdateBatch
from ..kernels import F32, row_dots, weighted_sum


class FLTrust(Aggregator):
    """Trust ``TS_i = relu(cos(x_i, g0))`` against the server's root update ``g0``;
    each update is rescaled to ``|g0|`` and the result is ``sum TS_i x_i' / sum TS_i``.

    Needs ``batch.root_update``. Unweighted by example counts (as in the paper).
    Rows with zero trust are ``"rejected:fltrust"``; when every row has zero
    trust the update is zero and ``info["all_untrusted"]`` is true.
    """

    name: ClassVar[str] = "fltrust"
    summary: ClassVar[str] = "trust-weighted mean by cosine to the server's root-dataset update"
    params: ClassVar[dict[str, Param]] = {}

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        g0 = batch.root_update
        if g0 is None:
            raise SettingError("fltrust: the batch has no root_update (server root dataset)")
        if g0.shape != (batch.dim,):
            raise SettingError(f"fltrust: root_update has shape {g0.shape}; expected ({batch.dim},)")
        g0 = np.asarray(g0, dtype=F32)
        g0_norm = float(np.sqrt(np.dot(g0, g0)))
        norms = np.sqrt(batch.sq_norms)
        # a row whose squared norm underflows to 0 has no direction: it earns no trust
        # (dividing by a floor instead would scale its tiny values up past the root norm)
        zero = norms == 0
        safe = np.where(zero, 1.0, norms)
        cos = row_dots(batch.updates, g0) / (safe * max(g0_norm, 1e-30))
        trust = np.where(zero, 0.0, np.maximum(cos, 0.0))
        total = trust.sum()
        if total > 0:
            update = weighted_sum(batch.updates, trust * (g0_norm / safe) / total)
        else:
            update = np.zeros(batch.dim, dtype=F32)
        return AggregateResult(
            update=update,
            fates=["accepted" if t > 0 else "rejected:fltrust" for t in trust],
            scores=trust.tolist(),
            info={"all_untrusted": bool(total <= 0), "root_norm": g0_norm},
        )

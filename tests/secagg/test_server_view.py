"""Point 5: everything the server receives reveals no individual update, only the sum.

The in-memory driver records every reply the server gets. Sites hold highly structured
updates (constant vectors, a ramp) so that any leak would show: each masked vector is
tested for uniformity on the 2^32 ring and for correlation with the site's true update.
The same tests applied to the unmasked quantised vector fail, so they have power.
"""

import numpy as np
from scipy import stats

from fedsilo.privacy.secagg import (
    KeyAdvert,
    MaskedReply,
    SecAggConfig,
    ShareReply,
    UnmaskReply,
)
from fedsilo.privacy.secagg.quantize import quantize

from .memory_driver import run_round

D = 20_000
P_MIN = 1e-6  # per-test false alarm probability for a truly uniform vector


def _inputs() -> dict[int, tuple[np.ndarray, float]]:
    ramp = np.linspace(-0.9, 0.9, D).astype(np.float32)
    return {11: (np.zeros(D, np.float32), 1.0), 12: (np.full(D, 0.5, np.float32), 1.0),
            13: (ramp, 1.0), 14: (-ramp, 1.0), 15: (np.full(D, -0.25, np.float32), 1.0),
            16: (ramp[::-1].copy(), 1.0)}


def _uniform_p(words: np.ndarray) -> float:
    """Smallest p-value of chi-square tests on each byte lane and on 1024 uint32 bins."""
    lanes = words.view(np.uint8).reshape(-1, 4)
    ps = [stats.chisquare(np.bincount(lanes[:, i], minlength=256)).pvalue for i in range(4)]
    ps.append(stats.chisquare(np.bincount(words >> np.uint32(22), minlength=1024)).pvalue)
    return float(min(ps))


def test_server_transcript_reveals_only_the_sum() -> None:
    inputs = _inputs()
    ids = sorted(inputs)
    rep = run_round(inputs, SecAggConfig(), drop={"masked": [ids[-1]]})
    assert rep.ok, rep.reason
    kinds = {type(m) for _, _, m in rep.received}
    assert kinds == {KeyAdvert, ShareReply, MaskedReply, UnmaskReply}

    masked = {n: m.masked for s, n, m in rep.received if isinstance(m, MaskedReply)}
    assert sorted(masked) == ids[:-1]
    for n, y in masked.items():
        x = inputs[n][0]
        assert _uniform_p(y) > P_MIN, f"masked vector of node {n} is not uniform"
        if np.std(x) > 0:
            r = np.corrcoef(y[:D].astype(np.float64), x)[0, 1]
            assert abs(r) < 6 / np.sqrt(D), f"masked vector of node {n} correlates: {r}"
    # the tests have power: the unmasked quantised ramp fails both
    q, _ = quantize(inputs[13][0], 1.0, 20, np.random.default_rng(0))
    assert _uniform_p(q) < 1e-12
    assert np.corrcoef(q.astype(np.float64), inputs[13][0])[0, 1] > 0.99

    # shares: for every owner the server got seed shares or key shares, never both
    b_owners: set[int] = set()
    sk_owners: set[int] = set()
    for _, _, m in rep.received:
        if isinstance(m, UnmaskReply):
            b_owners.update(m.b_owners)
            sk_owners.update(m.sk_owners)
    assert b_owners == set(ids[:-1]) and sk_owners == {ids[-1]}

    # ... and what it recovers is the sum, within the stated bound
    res = rep.result
    assert res is not None
    true = sum(inputs[n][0].astype(np.float64) for n in ids[:-1])
    assert np.max(np.abs(res.sum_delta - true)) < res.bound
    assert res.bound < 1e-5


def test_masked_vectors_of_equal_inputs_differ() -> None:
    inputs = {n: (np.zeros(1000, np.float32), 1.0) for n in (1, 2, 3)}
    rep = run_round(inputs, SecAggConfig())
    ys = [m.masked for _, _, m in rep.received if isinstance(m, MaskedReply)]
    assert len(ys) == 3
    assert all(np.mean(ys[i] == ys[j]) < 0.01 for i in range(3) for j in range(i + 1, 3))

"""Property tests: clipping bound and per-site sensitivity of the released average."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsilo.privacy.dp import ClientLevelDP, DPConfig, clip_update, update_norm

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=finite), st.floats(1e-3, 1e3))
def test_clipped_update_never_exceeds_clip_norm(u: np.ndarray, c: float) -> None:
    clipped, norm, was = clip_update(u, c)
    assert update_norm(clipped) <= c
    assert was == (norm > c)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (4, 40), elements=finite),
    arrays(np.float32, 40, elements=finite),
    st.sampled_from(["server", "site"]),
    st.floats(0.0, 500.0),
)
def test_one_site_moves_release_by_at_most_c_over_m(
    others: np.ndarray, extra: np.ndarray, where: str, weight: float
) -> None:
    c, m = 0.7, 5.0

    def release(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        cfg = DPConfig(
            noise_multiplier=1.0,
            clip_norm=c,
            secure_noise=False,
            where=where,
            weighting="capped",
            weight_cap=100.0,
        )  # type: ignore[arg-type]
        dp = ClientLevelDP(
            cfg, rounds=5, sample_rate=1.0, population=10, expected_clients=m, seed=3
        )
        return dp.aggregate(rows, weights).update.astype(np.float64)

    if where == "site":  # sites clip; the server only verifies
        others = np.stack([clip_update(r, c)[0] for r in others])
        extra = clip_update(extra, c)[0]
    w = np.full(4, 100.0)
    without = release(others, w)
    with_site = release(np.vstack([others, extra]), np.append(w, weight))
    # same seed, same d: identical noise, so the difference is the site's contribution
    assert np.linalg.norm(with_site - without) <= c / m * (1 + 1e-4) + 1e-5

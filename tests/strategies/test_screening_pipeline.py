"""Screening of replies and the messages -> UpdateBatch -> ArrayRecord pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from helpers.messages import error_message, message, reply_content

from fedsilo.common.codec import decode_flat, encode_flat
from fedsilo.privacy.screening import ScreeningError, ScreeningPolicy, screen_reply
from fedsilo.strategies.pipeline import batch_from_replies, encode_model

D = 8


def good(delta=None, n: int = 10) -> RecordDict:
    return reply_content(np.arange(D, dtype=np.float32) if delta is None else delta, n)


def test_good_reply_is_a_zero_copy_view() -> None:
    content = good()
    delta = screen_reply(content, dim=D, policy=ScreeningPolicy())
    np.testing.assert_array_equal(delta, np.arange(D))
    assert not delta.flags.owndata and not delta.flags.writeable


def _with(content: RecordDict, key: str, value) -> RecordDict:
    out = RecordDict(dict(content.items()))
    out[key] = value
    return out


def _without(content: RecordDict, key: str) -> RecordDict:
    return RecordDict({k: v for k, v in content.items() if k != key})


SITE = {"site_id": "a", "update_digest": "d", "data_fingerprint": "f", "signature": "s",
        "layout": "{}"}
CASES = [
    (_without(good(), "site"), "reply: missing ['site']; expected ['metrics', 'site', 'update']"),
    (_with(good(), "extra", ConfigRecord({"x": 1})), "reply: unexpected ['extra']"),
    (_with(good(), "update", ArrayRecord({"delta": encode_flat(np.zeros(D)), "bias": encode_flat(np.zeros(1))})),
     "update: unexpected ['bias']; expected ['delta']"),
    (_with(good(), "update", ArrayRecord({"weights": encode_flat(np.zeros(D))})),
     "update: missing ['delta'], unexpected ['weights']"),
    (_with(good(), "update", ArrayRecord({"delta": Array(np.zeros(D, np.float64))})),
     "update: update has dtype float64; expected float32"),
    (_with(good(), "update", ArrayRecord({"delta": Array(np.zeros((2, 4), np.float32))})),
     "update: update has shape (2, 4); expected a 1-D vector"),
    (good(np.zeros(D + 1, np.float32)), "update: update has 9 values; expected 8"),
    (good(np.array([0, 1, np.nan, 3, np.inf, 5, 6, 7], np.float32)), "update: 2 non-finite values"),
    (_with(good(), "metrics", MetricRecord({"train_loss": 0.1})), "metrics: missing 'num-examples'"),
    (good(n=0), "metrics: num-examples must be a positive integer, got 0"),
    (_with(good(), "site", ConfigRecord({k: v for k, v in SITE.items() if k != "signature"})),
     "site: missing ['signature']"),
    (_with(good(), "metrics", ConfigRecord({"num-examples": 3})),
     "reply 'metrics' is a ConfigRecord; expected MetricRecord"),
]


@pytest.mark.parametrize(("content", "reason"), CASES)
def test_bad_replies_are_rejected_with_a_reason(content: RecordDict, reason: str) -> None:
    with pytest.raises(ScreeningError) as caught:
        screen_reply(content, dim=D, policy=ScreeningPolicy())
    assert reason in caught.value.reason


def test_norm_and_example_bounds() -> None:
    policy = ScreeningPolicy(max_norm=10.0, max_examples=100)
    screen_reply(good(np.full(D, 3.0, np.float32)), dim=D, policy=policy)  # norm 8.49
    with pytest.raises(ScreeningError, match="update: L2 norm 11.3137 exceeds the bound 10"):
        screen_reply(good(np.full(D, 4.0, np.float32)), dim=D, policy=policy)
    with pytest.raises(ScreeningError, match="num-examples 101 exceeds the bound 100"):
        screen_reply(good(n=101), dim=D, policy=policy)
    huge = np.full(D, 3e38, np.float32)  # finite values whose float32 square overflows
    with pytest.raises(ScreeningError, match="L2 norm 8.48528e\\+38 exceeds"):
        screen_reply(good(huge), dim=D, policy=policy)


def test_policy_validates_itself() -> None:
    with pytest.raises(ValueError, match="ScreeningPolicy.max_norm must be a positive number"):
        ScreeningPolicy(max_norm=-1)


def test_batch_from_replies_accepts_rejects_and_names_sites() -> None:
    replies = [
        message(reply_content(np.ones(D, np.float32), 5), 11),
        message(reply_content(np.full(D, np.nan, np.float32), 5), 12),
        error_message("trainer crashed", 13),
        message(reply_content(2 * np.ones(D, np.float32), 15), 14),
        message(reply_content(np.ones(D + 2, np.float32), 5), 99),
    ]
    site_of = {11: "hospital-a", 12: "hospital-b", 13: "hospital-c", 14: "hospital-d"}
    batch, rejected = batch_from_replies(replies, dim=D, site_of=site_of, policy=ScreeningPolicy())
    assert batch.site_ids == ("hospital-a", "hospital-d")
    assert batch.node_ids == (11, 14)
    np.testing.assert_array_equal(batch.weights, [5.0, 15.0])
    assert rejected == {
        "hospital-b": "update: 8 non-finite values (NaN or Inf)",
        "hospital-c": "error reply: trainer crashed",
        "node:99": "update: update has 10 values; expected 8",
    }
    assert not batch.updates[0].flags.owndata


def test_encode_model_round_trips() -> None:
    flat = np.linspace(-1, 1, D, dtype=np.float32)
    record = encode_model(flat)
    assert list(record.keys()) == ["model"]
    np.testing.assert_array_equal(decode_flat(record["model"]), flat)
    np.testing.assert_array_equal(record["model"].numpy(), flat)


def test_the_mean_is_the_same_whatever_the_server_passes_and_is_computed_once() -> None:
    from fedsilo.strategies import make_aggregator

    rng = np.random.default_rng(3)
    deltas = rng.standard_normal((5, D)).astype(np.float32)
    replies = [message(reply_content(deltas[i], 10 * (i + 1)), i + 1) for i in range(5)]
    kwargs = {"dim": D, "site_of": {}, "policy": ScreeningPolicy()}
    # the precomputation switches are accepted and ignored (until the server drops them)
    flagged, _ = batch_from_replies(replies, accumulate=True, gram=True, median=True, **kwargs)
    plain, _ = batch_from_replies(replies, **kwargs)
    # screening's pass over the rows also sums them (one pass, `kernels.norms_and_sum`);
    # nothing else is computed before an aggregator asks
    assert "weighted_mean" in vars(flagged) and "gram" not in vars(flagged)
    expected = (np.arange(1, 6) * 10 / 150) @ deltas.astype(np.float64)
    mean = make_aggregator("mean")
    first = mean.aggregate(flagged).update
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    assert mean.aggregate(flagged).update is first  # computed once, kept on the batch
    assert mean.aggregate(plain).update.tobytes() == first.tobytes()
    # a subset is a new batch with its own mean
    np.testing.assert_allclose(
        mean.aggregate(flagged.subset([1, 2, 3, 4])).update,
        (np.arange(2, 6) * 10 / 140) @ deltas[1:].astype(np.float64), rtol=1e-5, atol=1e-6,
    )

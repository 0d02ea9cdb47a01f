"""The per-round fast paths: fixed-point rounding noise, own-row graph, zero-copy masked
records, reused state objects and parsed keys, in-place self-mask removal."""

import hashlib
import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsilo.client import secagg_handler
from fedsilo.privacy.secagg import SecAggConfig, client, crypto, unmask
from fedsilo.privacy.secagg.client import SecAggClient
from fedsilo.privacy.secagg.graph import harary, neighbours, ring_order
from fedsilo.privacy.secagg.messages import Malformed, MaskedReply, SetupRequest, UnmaskRequest
from fedsilo.privacy.secagg.quantize import (
    dequantize_sum,
    error_bound,
    noise_bits,
    quantize,
    scale,
)
from fedsilo.privacy.secagg.records import (
    MASKED_KEY,
    RECORD_KEY,
    decode_reply,
    encode,
    masked_array,
    masked_view,
)


# ------------------------------------------------------------------ quantisation noise
@pytest.mark.parametrize("bits", [8, 30])
def test_noise_words_round_up_exactly_above_the_fractional_threshold(bits: int) -> None:
    # x = 0 sits at v = c * s = (2^bits - 1) / 2: fraction exactly one half, so a word
    # rounds up iff its top F bits are >= 2^(F - 1), i.e. iff the word is >= 2^31.
    assert noise_bits(bits) == min(32, 52 - bits)
    words = np.array([0, 2**31 - 1, 2**31, 2**32 - 1], dtype=np.uint32)
    q, clipped = quantize(np.zeros(4), 1.0, bits, words)
    lo = (2**bits - 1) // 2
    assert clipped == 0
    assert q.tolist() == [lo, lo, lo + 1, lo + 1]


def test_keystream_noise_is_unbiased_and_within_one_level() -> None:
    n = 200_000
    x = np.full(n, 0.123456)
    noise = crypto.MaskGenerator(n).random_words()
    q, _ = quantize(x, 1.0, 4, noise)
    est = dequantize_sum(q, 1, 1.0, 4)
    assert np.all(np.abs(est - x) < error_bound(1, 1.0, 4))
    assert abs(est.mean() - 0.123456) < 0.002  # biased rounding would be off by ~0.07


def test_extreme_values_stay_in_range_and_short_noise_is_refused() -> None:
    x = np.array([-5.0, -1.0, 1.0, 5.0, 0.999999999])
    q, clipped = quantize(x, 1.0, 20, np.full(5, 2**32 - 1, dtype=np.uint32))
    assert clipped == 2 and q[0] == 0 and q.max() == 2**20 - 1
    with pytest.raises(ValueError, match="uint32 words"):
        quantize(x, 1.0, 20, np.zeros(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="uint32 words"):
        quantize(x, 1.0, 20, np.zeros(5, dtype=np.int64))


def test_random_words_are_fresh_each_call() -> None:
    gen = crypto.MaskGenerator(1000)
    a = gen.random_words().copy()
    b = gen.random_words()
    assert a.dtype == np.uint32 and a.shape == (1000,)
    assert not np.array_equal(a, b)


# ------------------------------------------------------------------ graph
@pytest.mark.parametrize("n,k", [(10, 4), (11, 4), (10, 3), (7, 6), (50, 12), (12, 11)])
def test_own_row_equals_the_full_graph(n: int, k: int) -> None:
    ids = [10**12 + 31 * i for i in range(n)]
    g = harary(ids, k, "run-x", 4)
    assert all(neighbours(ids, k, "run-x", 4, a) == g[a] for a in ids)
    with pytest.raises(ValueError):
        neighbours(ids, k, "run-x", 4, 5)  # not a participant


def test_ring_order_is_the_documented_hash_order() -> None:
    # the order must not change between versions: sites and servers of different
    # releases recompute it independently
    ids = [3, 1000, 2**63 + 5, 77]

    def key(nid: int) -> bytes:
        return hashlib.sha256(f"fedsilo/secagg/v1|ring|r|2|{nid}".encode()).digest()

    assert ring_order(ids, "r", 2) == sorted(ids, key=key)
    # the order is computed once per process and round; callers get their own list
    mine = ring_order(ids, "r", 2)
    mine.reverse()
    assert ring_order(ids, "r", 2) == sorted(ids, key=key)


# ------------------------------------------------------------------ masked records
def test_masked_record_is_standard_npy_and_decodes_to_a_view() -> None:
    y = np.arange(1003, dtype=np.uint32) * np.uint32(4_000_000)
    arr = masked_array(y)
    assert np.array_equal(np.load(io.BytesIO(arr.data)), y)  # what np.save writes
    assert arr.data == Array(y).data
    view = masked_view(arr)
    assert np.array_equal(view, y) and not view.flags.writeable
    rep = decode_reply("masked", encode(MaskedReply(y), 5), 5)
    assert isinstance(rep, MaskedReply) and np.array_equal(rep.masked, y)


@pytest.mark.parametrize("bad", [
    Array(np.zeros(10, dtype=np.int32)),
    Array(np.zeros(10, dtype=">u4")),
    Array(np.zeros((2, 5), dtype=np.uint32)),
    Array(dtype="uint32", shape=(10,), stype="numpy.ndarray", data=b"not npy at all"),
    Array(dtype="uint32", shape=(10,), stype="numpy.ndarray",
          data=Array(np.zeros(10, dtype=np.uint32)).data[:-4]),  # truncated
])
def test_malformed_masked_vectors_are_refused(bad: Array) -> None:
    with pytest.raises(ValueError):
        masked_view(bad)
    content = RecordDict({RECORD_KEY: ConfigRecord({"round": 2}),
                          MASKED_KEY: ArrayRecord({"masked": bad})})
    assert isinstance(decode_reply("masked", content, 2), Malformed)


# ------------------------------------------------------------------ site state
def _setup(node: int, rnd: int) -> SecAggClient:
    c = SecAggClient(node)
    c.setup(SetupRequest("run", rnd, SecAggConfig(), 100, 5))
    return c


def test_parsed_keys_are_used_only_for_their_own_state() -> None:
    first = _setup(41, 1)
    blob = first.dump()
    _setup(41, 2)  # a later setup of the same node replaces the parsed pair
    stale = client._PARSED[41]
    again = SecAggClient.load(blob)
    c_sk, s_sk = again._private_keys(stale)
    assert (c_sk.private_bytes_raw(), s_sk.private_bytes_raw()) == \
        (again.st["c_sk"], again.st["s_sk"])
    assert c_sk.private_bytes_raw() != stale[4].private_bytes_raw()
    current = _setup(41, 3)
    hit = client._PARSED[41]
    assert current._private_keys(hit) == (hit[4], hit[5])


def test_state_object_is_reused_only_while_the_context_holds_its_blob() -> None:
    ctx = Context(run_id=1, node_id=77, node_config={}, state=RecordDict(), run_config={})
    a = _setup(77, 1)
    secagg_handler._save(ctx, a)
    assert secagg_handler._load(ctx, 1) is a  # unchanged state: same object
    secagg_handler._save(ctx, a)
    b = _setup(77, 1)  # the context's state replaced behind the cache's back
    ctx.state[secagg_handler.STATE_KEY] = ConfigRecord({"blob": b.dump()})
    got = secagg_handler._load(ctx, 1)
    assert got is not a and got.st["c_pk"] == b.st["c_pk"] != a.st["c_pk"]
    # a load takes the object out: a stage failing half-way cannot leave it behind
    assert secagg_handler._load(ctx, 1) is not got
    ctx.state.pop(secagg_handler.STATE_KEY)
    with pytest.raises(client.SecAggClientError, match="no protocol state"):
        secagg_handler._load(ctx, 1)


def test_next_round_state_object_is_reused_only_while_the_context_holds_its_blob() -> None:
    ctx = Context(run_id=1, node_id=78, node_config={}, state=RecordDict(), run_config={})
    a = _setup(78, 2)
    secagg_handler._save_next(ctx, a)  # set up during round 1, beside round 1's state
    assert not secagg_handler._promote_next(ctx, 3)  # only for its own round
    assert secagg_handler._promote_next(ctx, 2)
    assert secagg_handler.NEXT_STATE_KEY not in ctx.state
    assert secagg_handler._load(ctx, 2) is a  # promoted together with its object
    b = _setup(78, 3)
    secagg_handler._save_next(ctx, b)
    other = _setup(78, 3)  # the context's next state replaced behind the cache's back
    ctx.state[secagg_handler.NEXT_STATE_KEY] = ConfigRecord({"blob": other.dump(), "round": 3})
    assert secagg_handler._promote_next(ctx, 3)
    got = secagg_handler._load(ctx, 3)
    assert got is not b and got.st["c_pk"] == other.st["c_pk"] != b.st["c_pk"]
    # saving a state for that round (or a later one) drops a next state it supersedes
    secagg_handler._save_next(ctx, _setup(78, 4))
    secagg_handler._save(ctx, _setup(78, 4))
    assert secagg_handler.NEXT_STATE_KEY not in ctx.state


def _quantize_reference(x: np.ndarray, factor: float, c: float, bits: int,
                        words: np.ndarray) -> tuple[np.ndarray, int]:
    """The documented formula as whole-array numpy operations (the pre-kernel code path)."""
    f = noise_bits(bits)
    sf = scale(c, bits) * 2.0**f
    v = x.astype(np.float64) * factor
    clipped = int(np.count_nonzero(np.abs(v) > c))
    w = np.clip(v, -c, c) * sf
    w += c * sf
    w += (words >> np.uint32(32 - f)).astype(np.float64)
    w *= 1.0 / 2.0**f
    return np.minimum(w.astype(np.int64), 2**bits - 1).astype(np.uint32), clipped


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("frac", [0.0, 1.0, 0.3, 1 / 3, 0.999999])
@pytest.mark.parametrize("bits", [4, 20, 31])
def test_fused_quantisation_is_exactly_the_numpy_formula(dtype: type, frac: float,
                                                         bits: int) -> None:
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal(10_001) * 10.0 ** rng.integers(-8, 1, 10_001)).astype(dtype)
    x[17], x[18], x[19] = -0.0, 5.0, -5.0  # two clipped when frac > 0.2
    words = rng.integers(0, 1 << 32, x.size, dtype=np.uint32)
    for c in (1.0, 0.75, 1 / 3):
        got, clipped = quantize(x, c, bits, words, factor=frac)
        want, want_clipped = _quantize_reference(x, frac, c, bits, words)
        assert np.array_equal(got, want)
        assert clipped == want_clipped
    assert got.max() <= 2**bits - 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantisation_refuses_non_finite_input(bad: float, dtype: type) -> None:
    x = np.zeros(1000, dtype=dtype)
    x[500] = bad
    x[501] = bad
    with pytest.raises(ValueError, match="quantize: 2 values are NaN or infinite"):
        quantize(x, 1.0, 20, np.zeros(1000, dtype=np.uint32), factor=0.5)


def test_quantisation_refuses_an_output_of_the_wrong_kind() -> None:
    x = np.zeros(8)
    for out in (np.empty(8, dtype=np.int32), np.empty(7, dtype=np.uint32),
                np.empty(16, dtype=np.uint32)[::2]):
        with pytest.raises(ValueError, match="out must be a contiguous uint32 array of 8"):
            quantize(x, 1.0, 20, np.zeros(8, dtype=np.uint32), out=out)


@pytest.mark.parametrize("count", [0, 1, 2, 5, 6])
def test_masks_added_two_at_a_time_equal_one_at_a_time(count: int) -> None:
    gen = crypto.MaskGenerator(1001)
    seeds = [hashlib.sha256(bytes([i])).digest() for i in range(count)]
    negate = [i % 3 == 1 for i in range(count)]
    acc = np.arange(1001, dtype=np.uint32) * np.uint32(2654435761)
    want = acc.copy()
    for seed, neg in zip(seeds, negate, strict=True):
        want = want - crypto.prg(seed, 1001) if neg else want + crypto.prg(seed, 1001)
    assert gen.add_masks(acc, seeds, negate) is acc
    assert np.array_equal(acc, want)
    with pytest.raises(ValueError, match="add_masks: 2 seeds but 1 signs"):
        gen.add_masks(acc, [b"0" * 32] * 2, [True])
    with pytest.raises(ValueError, match="acc must be a writable contiguous uint32 vector of "
                                         "1001 words"):
        gen.add_masks(np.zeros(1001, dtype=np.int32), seeds, negate)


def test_state_round_trips_through_dump_and_load_at_every_stage() -> None:
    from . import memory_driver as driver

    seen: list[tuple[str, dict]] = []

    class Recording(SecAggClient):
        def _snap(self, stage: str) -> None:
            copy = SecAggClient.load(self.dump())
            assert copy.node_id == self.node_id
            seen.append((stage, copy.st))
            assert copy.st == self.st, stage

        def setup(self, req):  # type: ignore[no-untyped-def]
            out = super().setup(req)
            self._snap("setup")
            return out

        def share(self, req):  # type: ignore[no-untyped-def]
            out = super().share(req)
            self._snap("share")
            return out

        def masked_input(self, req, delta, weight):  # type: ignore[no-untyped-def]
            out = super().masked_input(req, delta, weight)
            self._snap("masked")
            return out

    inputs = {i: (np.full(50, 0.01 * i, dtype=np.float32), 1.0) for i in range(1, 9)}
    rep = driver.run_round(inputs, SecAggConfig(degree=4), clients={1: Recording(1)})
    assert rep.ok
    stages = dict(seen)
    assert [s for s, _ in seen] == ["setup", "share", "masked"]
    assert len(stages["share"]["chan"]) == len(stages["share"]["mseed"]) == 4
    assert all(len(v) == 32 for v in stages["share"]["chan"].values())
    assert len(stages["masked"]["held"]) == 5  # four neighbours' shares and its own


def test_a_corrupted_state_table_is_refused() -> None:
    a = _setup(5, 1)
    a.st["chan"] = {"9": b"k" * 32}
    blob = a.dump().replace(b'"chan": [["9"], "', b'"chan": [["9", "10"], "')
    with pytest.raises(ValueError, match="table 'chan' has 32 bytes for 2 owners"):
        SecAggClient.load(blob)


def test_holder_points_are_the_holders_ranks() -> None:
    parts = [900, 5, 77, 2**63 + 1, 40]
    holders = [40, 900, 2**63 + 1]
    assert client.holder_points(parts, holders) == \
        [client.share_points(parts)[h] for h in holders] == [2, 4, 5]


# ------------------------------------------------------------------ server
def test_in_place_self_mask_removal_matches_the_sum() -> None:
    seeds = [bytes([i]) * 32 for i in range(5)]
    acc = np.arange(777, dtype=np.uint32)
    want = acc - unmask.self_mask_sum(seeds, 777)
    got = unmask.remove_self_masks(acc, seeds)
    assert got is acc and np.array_equal(acc, want)


@pytest.mark.parametrize("bits", [8, 20, 24, 31])
def test_top_level_never_overflows_with_or_without_clipping(bits: int) -> None:
    # x = +-c is not clipped, yet (c + c) * s rounds above 2^bits - 1 for some c (found
    # here, so the conservative clamp runs for them); with maximal noise every top value
    # must still be exactly 2^bits - 1 and every bottom one 0 or 1.
    f = noise_bits(bits)
    cs = np.random.default_rng(bits).uniform(1e-3, 1e3, 20_000)
    risky = [float(c) for c in cs
             if np.float64(c) * (scale(c, bits) * 2.0**f) + c * (scale(c, bits) * 2.0**f)
             > float(((1 << bits) - 1) << f)][:20]
    assert risky
    top = np.full(4, 2**32 - 1, dtype=np.uint32)
    for c in [*risky, 0.1, 1.0, 1 / 3]:
        for x in (np.array([c, -c, 0.5 * c, c]), np.array([2 * c, -c, 0.0, c])):
            q, _ = quantize(x, c, bits, top)
            assert q.max() == 2**bits - 1 and q[1] <= 1


def test_a_refused_request_drops_the_parsed_keys_with_the_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_run_id", "_node_id", "_task_id"):  # Messages built outside an app
        monkeypatch.setattr(TaskIdentity, attr, 1)
    ctx = Context(run_id=1, node_id=88, node_config={}, state=RecordDict(), run_config={})
    secagg_handler._save(ctx, _setup(88, 1))
    assert 88 in client._PARSED
    msg = Message(encode(UnmaskRequest([88], []), 1), dst_node_id=88,
                  message_type="train.secagg_unmask")
    rep = secagg_handler._handle("unmask", msg, ctx, lambda m, c: None)  # out of order
    assert rep.has_error() and "out of order" in rep.error.reason
    assert secagg_handler.STATE_KEY not in ctx.state and 88 not in client._PARSED

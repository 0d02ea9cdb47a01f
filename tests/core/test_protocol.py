"""The typed wire contract (`fedsilo.common.protocol`): lossless, and the very records the
server and the sites exchange today.

Round trips are checked on generated values (hypothesis) and on the records of a real
in-process run: ``RoundConfig.from_record(rec).to_record()`` gives back the server's
``config`` record key for key, in order, with the same value types, and every key it
sends is one the contract names (nothing lands in ``extra``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Error, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.common import codec, protocol
from fedsilo.common.protocol import ProtocolError, Refusal, RoundConfig, TrainReply

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)

_text = st.text(min_size=0, max_size=12)
_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
_scalar = st.one_of(st.booleans(), st.integers(-2**31, 2**31),
                    st.floats(allow_nan=False, allow_infinity=False), _text)


@st.composite
def round_configs(draw: st.DrawFn) -> RoundConfig:
    """Round configs as the server builds them: some fields absent, DP groups optional."""
    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.none(), strategy))

    number = st.one_of(st.integers(0, 100), st.floats(0, 10, allow_nan=False))
    groups = st.dictionaries(_key, _scalar, min_size=1, max_size=6)
    return RoundConfig(
        run_id=maybe(_text), server_round=maybe(st.integers(0, 10_000)), lr=maybe(number),
        local_epochs=maybe(st.integers(1, 50)), rounds_total=maybe(st.integers(1, 10_000)),
        proximal_mu=maybe(number), aggregator=maybe(_text), optimizer=maybe(_text),
        layout=maybe(_text), update_layout=maybe(_text),
        server_key_fingerprint=maybe(_text), secagg=maybe(st.booleans()),
        dp=maybe(groups), record_dp=maybe(groups))


def _items(rec: Any) -> list[tuple[str, type, Any]]:
    """A record's items in order, with each value's exact type (1 == 1.0 == True in Python)."""
    return [(k, type(v), v) for k, v in rec.items()]


@SETTINGS
@given(round_configs())
def test_round_config_round_trips(cfg: RoundConfig) -> None:
    rec = cfg.to_record()
    back = RoundConfig.from_record(rec)
    assert back == cfg
    assert _items(back.to_record()) == _items(rec)
    assert all(not k.startswith(("dp_", "record_dp_")) for k in back.extra)


@SETTINGS
@given(st.dictionaries(_key, _scalar, max_size=8), st.randoms(use_true_random=False))
def test_any_record_reads_back_to_the_same_items_in_the_same_order(
        raw: dict[str, Any], rnd: Any) -> None:
    known = {"server_round": 3, "run_id": "r", "secagg": False, "dp_where": "site"}
    items = [*raw.items(), *known.items()]
    rnd.shuffle(items)
    rec = dict(items)
    try:
        cfg = RoundConfig.from_record(rec)
    except ProtocolError:  # a named key with a value of another type: refused, one line
        return
    assert _items(cfg.to_dict()) == _items(rec)


@pytest.mark.parametrize(("key", "value"), [("server_round", "3"), ("server_round", True),
                                            ("secagg", 1), ("lr", "0.1"), ("layout", 5)])
def test_a_named_key_of_the_wrong_type_is_refused_naming_it(key: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match=f"round config: '{key}' must be"):
        RoundConfig.from_record({key: value})


def test_the_client_no_longer_strips_prefixes_by_hand() -> None:
    cfg = RoundConfig.from_record({"dp_where": "site", "dp_clip_norm": 1.5,
                                   "record_dp_delta": 1e-5, "record_dp_epsilon": 2.0})
    assert cfg.dp == {"where": "site", "clip_norm": 1.5} and cfg.dp_where == "site"
    assert cfg.record_dp == {"delta": 1e-5, "epsilon": 2.0}
    assert RoundConfig().dp_where is None and RoundConfig().round == 0


@SETTINGS
@given(st.integers(1, 2**40), st.dictionaries(_key.filter(lambda k: k != "num"), st.floats(
    allow_nan=False, allow_infinity=False), max_size=4), st.integers(0, 40))
def test_train_reply_round_trips(n: int, metrics: dict[str, float], size: int) -> None:
    delta = np.arange(size, dtype=np.float32)
    reply = TrainReply("site-7", codec.encode_flat(delta), n, metrics, "sha256:" + "a" * 64,
                       "sha256:" + "b" * 64, "c" * 128, '{"names":[]}')
    content = reply.to_record()
    back = TrainReply.from_record(content)
    assert back == reply
    assert list(content[codec.METRICS_RECORD]) == [codec.NUM_EXAMPLES_KEY, *metrics]
    assert list(content[codec.SITE_RECORD]) == ["site_id", "update_digest",
                                                "data_fingerprint", "signature", "layout"]
    assert np.array_equal(codec.decode_flat(back.update), delta)


def test_refusal_round_trips_as_a_record_and_as_a_secagg_error() -> None:
    refusal = Refusal("site-3", "round 4 exceeds the site's max_rounds 3")
    content = refusal.to_record()
    assert dict(content[codec.REFUSAL_RECORD]) == {"site_id": "site-3",
                                                   "reason": refusal.reason}
    assert Refusal.from_record(content) == refusal
    assert Refusal.from_record(RecordDict({})) is None
    error = refusal.to_error()
    assert error.code == protocol.REFUSAL_ERROR_CODE
    assert error.reason == "refused by site: round 4 exceeds the site's max_rounds 3"
    assert Refusal.from_error(error, "site-3") == refusal
    assert Refusal.from_error(Error(protocol.SECAGG_ERROR_CODE, "x")) is None


def test_a_reply_missing_a_part_is_named() -> None:
    with pytest.raises(ProtocolError, match="reply: no 'update' ArrayRecord"):
        TrainReply.from_record(RecordDict({}))


def test_the_codec_still_exports_the_wire_names() -> None:
    for name in ("GLOBAL_RECORD", "MODEL_KEY", "CONFIG_RECORD", "FEDERATION_RECORD",
                 "UPDATE_RECORD", "DELTA_KEY", "METRICS_RECORD", "SITE_RECORD",
                 "REFUSAL_RECORD", "NUM_EXAMPLES_KEY"):
        assert getattr(codec, name) == getattr(protocol, name)


# --------------------------------------------------- the records a real run exchanges
def test_the_records_a_real_run_exchanges_are_the_contract(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every train message's config and every training reply of an in-process run (with
    client-level DP clipped at the sites, so the ``dp_*`` keys are there) reads into the
    dataclasses and writes back to exactly the same records."""
    from fedsilo.server.config import RunConfig
    from fedsilo.simulations import inprocess
    from fedsilo.simulations.runner import run_federation

    seen: list[tuple[Message, Message]] = []
    deliver = inprocess.InProcessGrid._deliver

    def spy(self: inprocess.InProcessGrid, msg: Message) -> Message:
        reply = deliver(self, msg)
        if msg.metadata.message_type == "train":
            seen.append((msg, reply))
        return reply

    monkeypatch.setattr(inprocess.InProcessGrid, "_deliver", spy)
    cfg = RunConfig.load(None, {"out": str(tmp_path), "run_id": "wire", "sites": 3,
                                "rounds": 2, "dp.enabled": True, "dp.where": "site",
                                "dp.noise_multiplier": 0.5})
    run_federation(cfg, engine="inprocess")
    assert len(seen) == 6
    for msg, reply in seen:
        rec = msg.content[codec.CONFIG_RECORD]
        assert isinstance(rec, ConfigRecord)
        typed = RoundConfig.from_record(rec)
        assert typed.extra == {}, f"keys the contract does not name: {sorted(typed.extra)}"
        assert typed.dp is not None and typed.dp_where == "site"
        assert typed.key_order is None  # the server writes the contract's order
        assert _items(typed.to_record()) == _items(rec)
        back = TrainReply.from_record(reply.content).to_record()
        for name in (codec.METRICS_RECORD, codec.SITE_RECORD):
            assert _items(back[name]) == _items(reply.content[name])
        sent = reply.content[codec.UPDATE_RECORD][codec.DELTA_KEY]
        assert isinstance(sent, Array) and back[codec.UPDATE_RECORD][codec.DELTA_KEY].data == sent.data

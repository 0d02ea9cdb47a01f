"""The Message API glue (run_secagg_round + register_secagg) over an in-process grid."""

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity

from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.privacy.secagg.records import MASKED_KEY, RECORD_KEY
from fedsilo.server.secagg_round import run_secagg_round

from .apps import D, make_client_app, site_update, train_content
from .fake_grid import FakeGrid

NODES = [7001 + 13 * i for i in range(8)]
CFG = SecAggConfig(clip_range=0.5, bits=20, max_weight=100.0)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Messages built outside a running app need the task identity set.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    yield


def _plain(pids: list[int]) -> tuple[np.ndarray, float]:
    ups = [site_update(p) for p in pids]
    return sum(w * x.astype(np.float64) for x, w in ups), sum(w for _, w in ups)


def test_round_recovers_weighted_sum_and_records_lineage() -> None:
    grid = FakeGrid(make_client_app(), NODES)
    out = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="run-a", server_round=3, timeout=5.0)
    assert out.ok and out.reason is None
    assert out.sum_delta is not None and out.sum_delta.dtype == np.float32
    assert out.sum_delta.shape == (D,)
    total, weight = _plain(list(range(8)))
    bound = out.lineage["quantisation"]["bound"]
    assert np.max(np.abs(out.sum_delta - total)) < bound + 1e-5  # + float32 rounding
    assert abs(out.total_weight - weight) < 1e-3
    assert out.participants == NODES and out.recovered == []
    assert out.lineage["protocol"] == "secagg+"
    assert (out.lineage["degree"], out.lineage["threshold"]) == (6, 4)
    assert out.metrics["train_loss"] == pytest.approx(0.35)
    assert out.metrics["secagg_participants"] == 8.0
    types = [m.metadata.message_type for m in grid.sent]
    assert types == [f"train.secagg_{s}" for s in ("setup", "share", "masked", "unmask")
                     for _ in NODES]
    # the server got no plaintext model update: only the masked uint32 vector
    masked = [m.content[MASKED_KEY]["masked"].numpy() for m in grid.received
              if MASKED_KEY in m.content]
    assert len(masked) == 8 and all(m.dtype == np.uint32 and m.shape == (D + 2,)
                                    for m in masked)


def test_site_failing_during_training_is_recovered() -> None:
    grid = FakeGrid(make_client_app(fail_pid=2), NODES)
    out = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="run-b", server_round=1, timeout=5.0)
    assert out.ok, out.reason
    assert out.dropped["masked"] == [NODES[2]] and out.recovered == [NODES[2]]
    assert "site 2 crashed while training" in out.lineage["excluded"][str(NODES[2])]
    total, weight = _plain([0, 1, 3, 4, 5, 6, 7])
    assert out.sum_delta is not None
    assert np.max(np.abs(out.sum_delta - total)) < out.lineage["quantisation"]["bound"] + 1e-5
    assert abs(out.total_weight - weight) < 1e-3


def test_below_threshold_fails_cleanly() -> None:
    lost = set(NODES[:5])

    def mangle(rep: Message) -> Message | None:
        return None if rep.metadata.src_node_id in lost else rep

    grid = FakeGrid(make_client_app(), NODES, mangle=mangle)
    out = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="run-c", server_round=1, timeout=1.0)
    assert not out.ok and out.sum_delta is None and out.participants == []
    assert out.reason == "secagg setup: only 3 of 8 sites remain, threshold is 4"
    assert out.lineage["ok"] is False and out.lineage["reason"] == out.reason


def test_malformed_reply_records_are_excluded() -> None:
    bad = NODES[4]

    def mangle(rep: Message) -> Message | None:
        if rep.metadata.src_node_id == bad and RECORD_KEY in rep.content:
            cr = rep.content[RECORD_KEY]
            if "commitment" in cr:
                rep.content[RECORD_KEY] = ConfigRecord({**cr, "receivers": b"\x01\x02\x03"})
        return rep

    grid = FakeGrid(make_client_app(), NODES, mangle=mangle)
    out = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="run-d", server_round=1, timeout=1.0)
    assert out.ok
    assert out.dropped["share"] == [bad]
    assert out.lineage["excluded"][str(bad)] == (
        "share: malformed reply: ValueError: node id list must be bytes of length divisible by 8")


def test_bad_arguments_raise_before_sending() -> None:
    grid = FakeGrid(make_client_app(), NODES)
    with pytest.raises(ValueError, match="expected an ArrayRecord 'arrays'"):
        run_secagg_round(grid, NODES, train_content=train_content().__class__(),  # type: ignore[arg-type]
                         config=CFG, run_id="r", server_round=1, timeout=1.0)
    content = train_content()
    content[RECORD_KEY] = ConfigRecord({"x": 1})
    with pytest.raises(ValueError, match=r"record names \['secagg'\] are reserved"):
        run_secagg_round(grid, NODES, train_content=content, config=CFG,  # type: ignore[arg-type]
                         run_id="r", server_round=1, timeout=1.0)
    with pytest.raises(ValueError, match="secagg.bits"):
        run_secagg_round(grid, NODES, train_content=train_content(),  # type: ignore[arg-type]
                         config=SecAggConfig(bits=40), run_id="r", server_round=1, timeout=1.0)
    assert grid.sent == []


def test_stale_state_from_another_round_is_refused() -> None:
    app = make_client_app()
    grid = FakeGrid(app, NODES)
    run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                     run_id="r", server_round=1, timeout=1.0)
    unmask_msg = grid.sent[-1]
    rep = app(unmask_msg, grid.contexts[NODES[-1]])  # replay round 1's unmask request
    assert rep.has_error()
    assert rep.error.reason == (f"secagg: node {NODES[-1]} got a request out of order "
                                "(state 'done', expected 'masked')")


def test_replayed_round_is_refused() -> None:
    grid = FakeGrid(make_client_app(), NODES)
    first = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                             run_id="r", server_round=5, timeout=1.0)
    assert first.ok
    again = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                             run_id="r", server_round=5, timeout=1.0)
    assert not again.ok
    assert again.reason == "secagg setup: only 0 of 8 sites remain, threshold is 4"
    assert again.lineage["excluded"][str(NODES[0])] == (
        f"setup: site error: secagg: node {NODES[0]} already took part in round 5 of run 'r'; "
        "refusing round 5")
    nxt = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="r", server_round=6, timeout=1.0)
    assert nxt.ok


# ------------------------------------------------- keys advertised one round ahead
def _types(grid: FakeGrid, start: int = 0) -> list[str]:
    return [m.metadata.message_type.removeprefix("train.secagg_") for m in grid.sent[start:]]


def test_next_round_keys_replace_its_setup_exchange() -> None:
    grid = FakeGrid(make_client_app(), NODES)
    first = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                             run_id="run-n", server_round=1, timeout=1.0, announce_next=True)
    assert first.ok and first.lineage["keys_preadvertised"] == 0
    assert first.next_keys is not None
    assert first.next_keys.setup.server_round == 2 and sorted(first.next_keys.keys) == NODES
    # the round-1 unmask requests carried the round-2 setup; the replies, fresh keys
    unmask_replies = [m for m in grid.received if "secagg_next" in m.content]
    assert len(unmask_replies) == 8 and all(m.content["secagg_next"]["round"] == 2
                                            for m in unmask_replies)
    sent = len(grid.sent)
    second = run_secagg_round(grid, NODES, train_content=train_content(2), config=CFG,  # type: ignore[arg-type]
                              run_id="run-n", server_round=2, timeout=1.0,
                              preadvertised=first.next_keys)
    assert second.ok, second.reason
    assert _types(grid, sent) == [s for s in ("share", "masked", "unmask") for _ in NODES]
    assert second.lineage["keys_preadvertised"] == 8 and second.next_keys is None
    assert second.metrics["secagg_keys_preadvertised"] == 8.0
    total, weight = _plain(list(range(8)))
    assert second.sum_delta is not None
    assert np.max(np.abs(second.sum_delta - total)) < second.lineage["quantisation"]["bound"] + 1e-5
    assert abs(second.total_weight - weight) < 1e-3
    # the keys used in round 2 are the ones advertised for it, and a used round is claimed
    again = run_secagg_round(grid, NODES, train_content=train_content(2), config=CFG,  # type: ignore[arg-type]
                             run_id="run-n", server_round=2, timeout=1.0)
    assert not again.ok and again.lineage["excluded"][str(NODES[0])] == (
        f"setup: site error: secagg: node {NODES[0]} already took part in round 2 of run "
        "'run-n'; refusing round 2")


def test_replayed_unmask_request_keeps_the_next_rounds_keys() -> None:
    """A round-1 unmask request delivered again after the site set up round 2 is refused
    without discarding round 2's state: the site still takes part in round 2."""
    app = make_client_app()
    grid = FakeGrid(app, NODES)
    first = run_secagg_round(grid, NODES, train_content=train_content(1), config=CFG,  # type: ignore[arg-type]
                             run_id="run-r", server_round=1, timeout=1.0, announce_next=True)
    unmask = next(m for m in grid.sent if m.metadata.dst_node_id == NODES[0]
                  and m.metadata.message_type.endswith("unmask"))
    rep = app(unmask, grid.contexts[NODES[0]])
    assert rep.has_error() and rep.error.reason == (
        f"secagg: node {NODES[0]} state is for round 2, message is for round 1")
    second = run_secagg_round(grid, NODES, train_content=train_content(2), config=CFG,  # type: ignore[arg-type]
                              run_id="run-r", server_round=2, timeout=1.0,
                              preadvertised=first.next_keys)
    assert second.ok and second.participants == NODES
    assert second.lineage["keys_preadvertised"] == 8


def test_site_without_next_keys_gets_a_setup_message() -> None:
    grid = FakeGrid(make_client_app(fail_pid=2, fail_round=1), NODES)
    first = run_secagg_round(grid, NODES, train_content=train_content(1), config=CFG,  # type: ignore[arg-type]
                             run_id="run-f", server_round=1, timeout=1.0, announce_next=True)
    assert first.ok and first.dropped["masked"] == [NODES[2]]
    assert first.next_keys is not None and NODES[2] not in first.next_keys.keys
    sent = len(grid.sent)
    second = run_secagg_round(grid, NODES, train_content=train_content(2), config=CFG,  # type: ignore[arg-type]
                              run_id="run-f", server_round=2, timeout=1.0,
                              preadvertised=first.next_keys)
    assert second.ok and second.participants == NODES
    assert [m.metadata.dst_node_id for m in grid.sent[sent:] if
            m.metadata.message_type.endswith("setup")] == [NODES[2]]
    assert second.lineage["keys_preadvertised"] == 7


def test_unused_keys_are_replaced_when_the_round_changes() -> None:
    """A different sample size or config makes the advertised keys unusable: every site
    gets a setup message, and sites replace keys they advertised but never used."""
    grid = FakeGrid(make_client_app(), NODES)
    first = run_secagg_round(grid, NODES, train_content=train_content(1), config=CFG,  # type: ignore[arg-type]
                             run_id="run-c", server_round=1, timeout=1.0, announce_next=True)
    sent = len(grid.sent)
    second = run_secagg_round(grid, NODES[:7], train_content=train_content(2), config=CFG,  # type: ignore[arg-type]
                              run_id="run-c", server_round=2, timeout=1.0,
                              preadvertised=first.next_keys)
    assert second.ok, second.reason
    assert _types(grid, sent) == [s for s in ("setup", "share", "masked", "unmask")
                                  for _ in NODES[:7]]
    assert second.lineage["keys_preadvertised"] == 0
    total, _ = _plain(list(range(7)))
    assert second.sum_delta is not None
    assert np.max(np.abs(second.sum_delta - total)) < second.lineage["quantisation"]["bound"] + 1e-5


def test_bad_next_round_records_only_cost_the_shortcut() -> None:
    """A next-round setup for the wrong round is refused by the site (its unmask reply
    still counts), and a key advertisement for the wrong round is ignored by the server."""
    app = make_client_app()
    bad_site, bad_reply = NODES[1], NODES[3]

    def mangle(rep: Message) -> Message | None:
        if rep.metadata.src_node_id == bad_reply and "secagg_next" in rep.content:
            rep.content["secagg_next"] = ConfigRecord({**rep.content["secagg_next"], "round": 9})
        return rep

    grid = FakeGrid(app, NODES, mangle=mangle)
    orig = grid.send_and_receive

    def send(messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        for m in messages:
            if m.metadata.dst_node_id == bad_site and "secagg_next" in m.content:
                m.content["secagg_next"] = ConfigRecord({**m.content["secagg_next"], "round": 5})
        return orig(messages, timeout=timeout)

    grid.send_and_receive = send  # type: ignore[method-assign]
    first = run_secagg_round(grid, NODES, train_content=train_content(1), config=CFG,  # type: ignore[arg-type]
                             run_id="run-b", server_round=1, timeout=1.0, announce_next=True)
    assert first.ok and first.participants == NODES
    assert first.next_keys is not None
    assert sorted(first.next_keys.keys) == sorted(set(NODES) - {bad_site, bad_reply})
    replies = {m.metadata.src_node_id: m for m in grid.received if "secagg_next" in m.content}
    assert bad_site not in replies and len(replies) == 7
    sent = len(grid.sent)
    second = run_secagg_round(grid, NODES, train_content=train_content(2), config=CFG,  # type: ignore[arg-type]
                              run_id="run-b", server_round=2, timeout=1.0,
                              preadvertised=first.next_keys)
    assert second.ok, second.reason
    assert second.participants == NODES  # bad_reply's site replaced its unused keys
    assert sorted(m.metadata.dst_node_id for m in grid.sent[sent:]
                  if m.metadata.message_type.endswith("setup")) == sorted([bad_site, bad_reply])


def test_first_round_keys_come_with_the_handshake() -> None:
    """`advertise_first_keys` (what a site's handshake handler calls) sets up the round the
    handshake names; the round then runs without a setup message."""
    from flwr.app import Context, RecordDict

    from fedsilo.client.secagg_handler import advertise_first_keys
    from fedsilo.privacy.secagg import KeyAdvert, SetupRequest
    from fedsilo.server.secagg_round import PreAdvertised, setup_record

    grid = FakeGrid(make_client_app(), NODES)
    setup = SetupRequest("run-h", 1, CFG, D, len(NODES))
    hello = Message(RecordDict({"secagg_next": setup_record(setup)}), dst_node_id=NODES[0],
                    message_type="query.handshake", group_id="0")
    keys = {}
    for node in NODES:
        rec = advertise_first_keys(hello, grid.contexts[node], "run-h")
        assert rec is not None and rec["round"] == 1
        keys[node] = KeyAdvert(rec["c_pk"], rec["s_pk"])  # type: ignore[arg-type]
    out = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="run-h", server_round=1, timeout=1.0,
                           preadvertised=PreAdvertised(setup, keys))
    assert out.ok and out.lineage["keys_preadvertised"] == 8
    assert _types(grid) == [s for s in ("share", "masked", "unmask") for _ in NODES]
    # another run's setup, or a round this site has already taken part in: no keys
    other = Context(run_id=1, node_id=NODES[0], node_config={}, state=RecordDict(), run_config={})
    assert advertise_first_keys(hello, other, "run-x") is None
    assert advertise_first_keys(hello, grid.contexts[NODES[0]], "run-h") is None
    assert "secagg_state" not in other.state

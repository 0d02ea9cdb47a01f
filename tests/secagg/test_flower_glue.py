"""The Message API glue (`SecAggSession.exchange` + register_secagg) over an in-process grid."""

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsilo.privacy.secagg import SecAggConfig
from fedsilo.privacy.secagg.records import MASKED_KEY, RECORD_KEY, ids_from_bytes

from .apps import D, make_client_app, site_update, train_content
from .fake_grid import FakeGrid
from .helpers import run_secagg_round

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


def test_a_refused_setup_request_does_not_claim_its_round() -> None:
    """A setup request the site refuses (here: a sample of one site) leaves no claim on
    the round: the correct request for the same round, right after it, is accepted."""
    bad = NODES[0]
    grid = FakeGrid(make_client_app(), NODES)
    orig = grid.send_and_receive
    refusals: list[str] = []

    def send(messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        for m in messages:
            if m.metadata.dst_node_id == bad and m.metadata.message_type.endswith("setup"):
                cr = m.content[RECORD_KEY]
                broken = Message(RecordDict({RECORD_KEY: ConfigRecord({**cr, "num_sampled": 1})}),
                                 dst_node_id=bad, message_type=m.metadata.message_type)
                rep = grid.app(broken, grid.contexts[bad])
                refusals.append(rep.error.reason if rep.has_error() else "accepted")
        return orig(messages, timeout=timeout)

    grid.send_and_receive = send  # type: ignore[method-assign]
    out = run_secagg_round(grid, NODES, train_content=train_content(), config=CFG,  # type: ignore[arg-type]
                           run_id="run-s", server_round=4, timeout=1.0)
    assert refusals == [f"secagg: node {bad}: bad round parameters (vector_length={D}, "
                        "num_sampled=1)"]
    assert out.ok and out.participants == NODES and out.lineage["excluded"] == {}
    total, weight = _plain(list(range(8)))
    assert out.sum_delta is not None
    assert np.max(np.abs(out.sum_delta - total)) < out.lineage["quantisation"]["bound"] + 1e-5


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
    # the round-1 masked-input requests carried the round-2 setup; the replies, fresh keys
    key_replies = [m for m in grid.received if "secagg_next" in m.content]
    assert len(key_replies) == 8 and all(m.content["secagg_next"]["round"] == 2
                                         and MASKED_KEY in m.content for m in key_replies)
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


# ------------------------------------- the next round's share stage rides on the unmask
def _round(grid: FakeGrid, rnd: int, run_id: str, before: object = None, nodes: list[int] = NODES,
           ahead: bool = True):  # type: ignore[no-untyped-def]
    return run_secagg_round(grid, nodes, train_content=train_content(rnd), config=CFG,  # type: ignore[arg-type]
                            run_id=run_id, server_round=rnd, timeout=1.0,
                            preadvertised=before, announce_next=ahead,  # type: ignore[arg-type]
                            next_nodes=NODES if ahead else None)


def _assert_sum(out, pids: list[int]) -> None:  # type: ignore[no-untyped-def]
    assert out.ok, out.reason
    total, weight = _plain(pids)
    assert np.max(np.abs(out.sum_delta - total)) < out.lineage["quantisation"]["bound"] + 1e-5
    assert abs(out.total_weight - weight) < 1e-3


def test_rounds_after_the_first_take_two_exchanges() -> None:
    from fedsilo.server.secagg_round import PreShared

    grid = FakeGrid(make_client_app(), NODES)
    first = _round(grid, 1, "run-p")
    _assert_sum(first, list(range(8)))
    assert _types(grid) == [s for s in ("setup", "share", "masked", "unmask") for _ in NODES]
    assert isinstance(first.next_keys, PreShared) and first.next_keys.abort is None
    assert first.next_keys.server.sets.u2 == NODES
    # each unmask request carried that site's own round-2 share request (its neighbours'
    # keys), each reply the site's encrypted round-2 shares
    unmask = [m for m in grid.sent if m.metadata.message_type.endswith("unmask")]
    graph = first.next_keys.server.graph
    assert all(m.content["secagg_next"]["round"] == 2 and ids_from_bytes(
        m.content["secagg_next"]["neighbours"]) == graph[m.metadata.dst_node_id] for m in unmask)
    assert len(unmask) == 8
    shares = [m for m in grid.received if "secagg_next" in m.content and RECORD_KEY in m.content
              and "b_owners" in m.content[RECORD_KEY]]
    assert len(shares) == 8 and all("ciphertexts" in m.content["secagg_next"] for m in shares)
    sent = len(grid.sent)
    second = _round(grid, 2, "run-p", first.next_keys)
    _assert_sum(second, list(range(8)))
    assert _types(grid, sent) == [s for s in ("masked", "unmask") for _ in NODES]
    assert (second.lineage["keys_preadvertised"], second.lineage["shares_ahead"]) == (8, 8)
    assert second.metrics["secagg_shares_ahead"] == 8.0 and second.participants == NODES
    sent = len(grid.sent)
    third = _round(grid, 3, "run-p", second.next_keys, ahead=False)
    _assert_sum(third, list(range(8)))
    assert _types(grid, sent) == [s for s in ("masked", "unmask") for _ in NODES]
    assert third.next_keys is None
    # a round whose shares went out is claimed: it cannot be set up again
    again = _round(grid, 3, "run-p", ahead=False)
    assert not again.ok and again.lineage["excluded"][str(NODES[0])] == (
        f"setup: site error: secagg: node {NODES[0]} already took part in round 3 of run "
        "'run-p'; refusing round 3")


def test_a_site_missing_the_unmask_exchange_sits_out_only_the_next_round() -> None:
    late, lost = NODES[3], NODES[5]  # late: its reply is lost; lost: the request is

    def mangle(rep: Message) -> Message | None:
        unmask = rep.metadata.src_node_id == late and "b_owners" in rep.content.get(RECORD_KEY, {})
        return None if unmask and rep.content[RECORD_KEY]["round"] == 1 else rep

    grid = FakeGrid(make_client_app(), NODES, mangle=mangle)
    orig = grid.send_and_receive

    def send(messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        keep = [m for m in messages if not (m.metadata.dst_node_id == lost and m.metadata.group_id
                                            == "1" and m.metadata.message_type.endswith("unmask"))]
        return orig(keep, timeout=timeout)

    grid.send_and_receive = send  # type: ignore[method-assign]
    first = _round(grid, 1, "run-l")
    _assert_sum(first, list(range(8)))  # unmasked without them: they sent their masked input
    assert sorted(first.dropped["unmask"]) == sorted([late, lost])
    second = _round(grid, 2, "run-l", first.next_keys)
    assert second.lineage["shares_ahead"] == 6
    assert sorted(second.dropped["share"]) == sorted([late, lost])
    _assert_sum(second, [0, 1, 2, 4, 6, 7])
    sent = len(grid.sent)
    third = _round(grid, 3, "run-l", second.next_keys)  # both are back, through a setup message
    _assert_sum(third, list(range(8)))
    assert sorted(m.metadata.dst_node_id for m in grid.sent[sent:]
                  if m.metadata.message_type.endswith("setup")) == sorted([late, lost])
    assert third.lineage["shares_ahead"] == 0 and third.lineage["keys_preadvertised"] == 6


def test_a_refused_share_request_costs_the_site_only_the_next_round() -> None:
    bad = NODES[1]
    grid = FakeGrid(make_client_app(), NODES)
    orig = grid.send_and_receive

    def send(messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        for m in messages:
            if m.metadata.dst_node_id == bad and m.metadata.message_type.endswith("unmask"):
                nxt = m.content["secagg_next"]
                m.content["secagg_next"] = ConfigRecord({**nxt, "neighbours": nxt["participants"]})
        return orig(messages, timeout=timeout)

    grid.send_and_receive = send  # type: ignore[method-assign]
    first = _round(grid, 1, "run-x")
    _assert_sum(first, list(range(8)))
    assert first.dropped["unmask"] == [] and first.recovered == []  # its unmask reply stood
    reply = next(m for m in grid.received if m.metadata.src_node_id == bad
                 and "b_owners" in m.content[RECORD_KEY])
    assert "secagg_next" not in reply.content
    second = _round(grid, 2, "run-x", first.next_keys, ahead=False)
    assert second.dropped["share"] == [bad] and bad not in second.lineage["excluded"]
    _assert_sum(second, [0, 2, 3, 4, 5, 6, 7])


def test_a_round_shared_ahead_is_set_up_afresh_when_it_cannot_start_masked() -> None:
    """Too few shares ahead, or a server that lost the round (a restart): the sites have
    shared but not masked, so they accept new keys and the round runs in full."""
    def mangle(rep: Message) -> Message | None:
        if "b_owners" in rep.content.get(RECORD_KEY, {}) and rep.content[RECORD_KEY]["round"] == 1:
            rep.content.pop("secagg_next", None)  # every round-2 share lost
        return rep

    grid = FakeGrid(make_client_app(), NODES, mangle=mangle)
    first = _round(grid, 1, "run-z")
    _assert_sum(first, list(range(8)))
    assert first.next_keys is not None and first.next_keys.abort == (  # type: ignore[union-attr]
        "secagg share: only 0 of 8 sites remain, threshold is 4")
    sent = len(grid.sent)
    second = _round(grid, 2, "run-z", first.next_keys)
    _assert_sum(second, list(range(8)))
    assert _types(grid, sent) == [s for s in ("setup", "share", "masked", "unmask") for _ in NODES]
    assert (second.lineage["keys_preadvertised"], second.lineage["shares_ahead"]) == (0, 0)
    # round 3 was shared ahead during round 2; a restarted server sets it up again
    sent = len(grid.sent)
    third = _round(grid, 3, "run-z", ahead=False)
    _assert_sum(third, list(range(8)))
    assert _types(grid, sent) == [s for s in ("setup", "share", "masked", "unmask") for _ in NODES]

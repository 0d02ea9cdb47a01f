"""Forged, duplicated or malformed messages: the offender is excluded or the round aborts,
with a clear reason; a wrong sum is never output."""

import dataclasses
import os

import numpy as np

from fedsilo.privacy.secagg import (
    KeyAdvert,
    MaskedReply,
    MaskedRequest,
    SecAggClient,
    SecAggConfig,
    ShareReply,
    ShareRequest,
    SiteError,
    UnmaskReply,
    UnmaskRequest,
    crypto,
    shamir,
)

from .helpers import assert_exact_sum, make_inputs
from .memory_driver import run_round

CFG = SecAggConfig(max_weight=10.0)
INPUTS = make_inputs(10, 200, seed=5)
IDS = sorted(INPUTS)
A, B = IDS[2], IDS[6]


def _random_share() -> bytes:
    return (int.from_bytes(os.urandom(70), "big") % shamir.PRIME).to_bytes(66, "big")


def test_forged_share_ciphertext_is_refused_by_its_receiver() -> None:
    def tamper(stage: str, node: int, req: object) -> object:
        if stage == "masked" and node == A:
            assert isinstance(req, MaskedRequest)
            ct = req.ciphertexts[0]
            return MaskedRequest(req.senders, [ct[:-1] + bytes([ct[-1] ^ 1]),
                                               *req.ciphertexts[1:]])
        return req

    rep = run_round(INPUTS, CFG, tamper_request=tamper)
    assert "failed authentication (forged or altered)" in rep.reasons[A]
    assert rep.dropped["masked"] == [A]
    assert_exact_sum(rep, INPUTS)
    assert rep.result is not None and rep.result.recovered == [A]


def test_duplicated_share_receivers_exclude_the_sender() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "share" and node == A:
            assert isinstance(rep, ShareReply)
            recv = [rep.receivers[0], *rep.receivers[:-1]]
            return ShareReply(recv, rep.ciphertexts, rep.commitment)
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert rep.reasons[A] == "share: shares must go to exactly its graph neighbours, once each"
    assert_exact_sum(rep, INPUTS)
    assert rep.result is not None and A not in rep.result.participants


def test_masked_vector_of_wrong_dtype_or_length_is_excluded_and_recovered() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "masked" and node == A:
            assert isinstance(rep, MaskedReply)
            return MaskedReply(rep.masked.astype(np.int64))
        if stage == "masked" and node == B:
            assert isinstance(rep, MaskedReply)
            return MaskedReply(rep.masked[:-1])
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert rep.reasons[A] == "masked: masked vector must be uint32 of shape (202,), got int64 (202,)"
    assert rep.reasons[B] == "masked: masked vector must be uint32 of shape (202,), got uint32 (201,)"
    assert_exact_sum(rep, INPUTS)
    assert rep.result is not None and rep.result.recovered == sorted([A, B])


def test_garbage_masked_vector_fails_the_consistency_check() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "masked" and node == A:
            return MaskedReply(np.frombuffer(os.urandom(4 * 202), dtype=np.uint32).copy())
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert not rep.ok and rep.result is None
    assert rep.reason == ("secagg unmask: recovered sum failed its consistency check "
                          "(masks did not cancel); no sum is output")


def test_one_forged_unmask_share_is_detected_and_named() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "unmask" and node == A:
            assert isinstance(rep, UnmaskReply)
            return dataclasses.replace(rep, b_shares=[_random_share(), *rep.b_shares[1:]])
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert_exact_sum(rep, INPUTS)
    assert rep.reasons[A].startswith("unmask: forged share of node")


def test_malformed_unmask_share_excludes_the_holder() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "unmask" and node == A:
            assert isinstance(rep, UnmaskReply)
            return dataclasses.replace(rep, b_shares=[b"\x00" * 65, *rep.b_shares[1:]])
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert rep.reasons[A] == "unmask: malformed share (not a field element)"
    assert rep.dropped["unmask"] == [A]
    assert_exact_sum(rep, INPUTS)


def test_too_many_forged_shares_abort() -> None:
    victim = IDS[0]

    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "unmask" and node in IDS[1:6]:
            assert isinstance(rep, UnmaskReply)
            shares = [_random_share() if o == victim else s
                      for o, s in zip(rep.b_owners, rep.b_shares, strict=True)]
            return dataclasses.replace(rep, b_shares=shares)
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert not rep.ok
    assert rep.reason is not None and "could not be reconstructed" in rep.reason


class _KeySwapper(SecAggClient):
    """Shares a mask key different from the one it advertised."""

    def share(self, req: ShareRequest) -> ShareReply:
        self.st["s_sk"] = crypto.generate_keypair()[0]
        return super().share(req)


def test_shared_key_not_matching_the_advertised_key_aborts() -> None:
    rep = run_round(INPUTS, CFG, clients={A: _KeySwapper(A)}, drop={"masked": [A]})
    assert not rep.ok
    assert rep.reason == (f"secagg unmask: mask key of node {A} could not be reconstructed "
                          "from consistent shares (forged shares?); no sum is output")


def test_duplicated_public_key_excludes_both_sites() -> None:
    adverts: dict[int, KeyAdvert] = {}

    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "setup":
            assert isinstance(rep, KeyAdvert)
            adverts[node] = rep
            if node == B:
                return adverts[A]
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert rep.reasons[A] == rep.reasons[B] == "setup: public key also advertised by another site"
    assert_exact_sum(rep, INPUTS)
    assert rep.result is not None and len(rep.result.participants) == 8


def test_server_echoing_other_keys_is_refused() -> None:
    def tamper(stage: str, node: int, req: object) -> object:
        if stage == "share" and node == A:
            assert isinstance(req, ShareRequest)
            return dataclasses.replace(req, own_s_pk=req.s_pks[0])
        return req

    rep = run_round(INPUTS, CFG, tamper_request=tamper)
    assert rep.reasons[A] == (f"share: site error: secagg: node {A}: server echoed keys "
                              "it did not advertise")
    assert_exact_sum(rep, INPUTS)


def test_substituted_neighbour_key_is_caught_by_authentication() -> None:
    mitm_sk, mitm_pk = crypto.generate_keypair()

    def tamper(stage: str, node: int, req: object) -> object:
        if stage == "share" and node == A:
            assert isinstance(req, ShareRequest)
            return dataclasses.replace(req, c_pks=[mitm_pk, *req.c_pks[1:]])
        return req

    rep = run_round(INPUTS, CFG, tamper_request=tamper)
    assert any("failed authentication" in r for r in rep.reasons.values())
    assert_exact_sum(rep, INPUTS)


def test_overlapping_survivor_and_dropped_sets_are_refused() -> None:
    def tamper(stage: str, node: int, req: object) -> object:
        if stage == "unmask" and node == A:
            assert isinstance(req, UnmaskRequest)
            return UnmaskRequest(req.survivors, [*req.dropped, req.survivors[0]])
        return req

    rep = run_round(INPUTS, CFG, tamper_request=tamper)
    assert rep.reasons[A] == (f"unmask: site error: secagg: node {A}: survivor and dropped "
                              "lists overlap or repeat")
    assert_exact_sum(rep, INPUTS)


def test_wrong_reply_type_and_site_error_are_recorded() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "share" and node == A:
            return {"not": "a reply"}
        if stage == "share" and node == B:
            return SiteError("disk full")
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    assert rep.reasons[A] == "share: malformed reply (expected ShareReply)"
    assert rep.reasons[B] == "share: site error: disk full"
    assert_exact_sum(rep, INPUTS)


def test_low_order_or_short_public_keys_exclude_the_site() -> None:
    def tamper(stage: str, node: int, rep: object) -> object:
        if stage == "setup" and node == A:
            assert isinstance(rep, KeyAdvert)
            return KeyAdvert(rep.c_pk, bytes(32))  # the all-zero (low-order) point
        if stage == "setup" and node == B:
            assert isinstance(rep, KeyAdvert)
            return KeyAdvert(rep.c_pk[:31], rep.s_pk)
        return rep

    rep = run_round(INPUTS, CFG, tamper_reply=tamper)
    reason = "setup: public keys must be two distinct valid 32-byte X25519 keys"
    assert rep.reasons[A] == rep.reasons[B] == reason
    assert rep.dropped["setup"] == sorted([A, B])
    assert_exact_sum(rep, INPUTS)


def test_update_with_nan_or_inf_is_refused_by_its_own_site_and_recovered() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        inputs = dict(INPUTS)
        delta, weight = inputs[A]
        poisoned = delta.copy()
        poisoned[len(poisoned) // 2] = bad
        inputs[A] = (poisoned, weight)
        rep = run_round(inputs, CFG)
        assert rep.reasons[A].endswith("update has non-finite values"), (bad, rep.reasons[A])
        assert rep.dropped["masked"] == [A]
        assert rep.result is not None and rep.result.recovered == [A]
        assert_exact_sum(rep, inputs)

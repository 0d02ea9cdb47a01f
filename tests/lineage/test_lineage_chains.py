"""Per-site attestation chains: the site's ``prev`` check, the server's chain heads, and the
bulk fast paths of ``verify`` (each tested equal to its reference check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsilo.lineage import (
    GENESIS_ATTESTATION,
    attestation_digest,
    contribution_message,
    read_chain,
    verify_run,
)
from fedsilo.lineage.canonical import canonical_json, is_canonical
from fedsilo.lineage.envelope import SIGNED_KEYS
from fedsilo.lineage.fastcheck import (
    contributions_ok,
    float_residual,
    round_columns,
    round_residual,
)
from fedsilo.lineage.ledger import SiteLedger
from fedsilo.lineage.records import SiteContribution, validator_for
from fedsilo.lineage.synthetic import SyntheticRun, build_synthetic_run

D = "sha256:" + "ab" * 32


def test_ledger_accepts_only_its_own_attestations(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path / "ledger.jsonl", fsync=False)
    assert ledger.prev_refusal("run-1", GENESIS_ATTESTATION) is None
    mine = attestation_digest(contribution_message("run-1", 1, D, D, GENESIS_ATTESTATION))
    assert ledger.prev_refusal("run-1", mine) == (
        f"attestation prev {mine[:19]}… is not an attestation this site signed in run "
        "'run-1' (its ledger has no such entry)")
    ledger.append({"run_id": "run-1", "site_id": "s", "round": 1, "status": "sent",
                   "update_digest": D, "data_fingerprint": D, "num_examples": 3,
                   "signature": "cd" * 64, "prev": GENESIS_ATTESTATION, "attestation": mine})
    assert ledger.prev_refusal("run-1", mine) is None
    assert ledger.prev_refusal("run-2", mine) is not None  # another run's chain
    # a fresh reader of the same file knows it too (read once, then kept current)
    assert SiteLedger(tmp_path / "ledger.jsonl").prev_refusal("run-1", mine) is None


def test_ledger_sees_what_another_process_appended(tmp_path: Path) -> None:
    """A simulated site built in two engine workers holds two readers of one ledger file:
    an attestation one of them appended after the other read the file is still its own."""
    early = SiteLedger(tmp_path / "ledger.jsonl", fsync=False)
    assert early.prev_refusal("run-1", GENESIS_ATTESTATION) is None  # reads the (empty) file
    mine = attestation_digest(contribution_message("run-1", 1, D, D, GENESIS_ATTESTATION))
    SiteLedger(tmp_path / "ledger.jsonl", fsync=False).append({
        "run_id": "run-1", "site_id": "s", "round": 1, "status": "sent", "update_digest": D,
        "data_fingerprint": D, "num_examples": 3, "signature": "cd" * 64,
        "prev": GENESIS_ATTESTATION, "attestation": mine})
    assert early.prev_refusal("run-1", mine) is None
    assert early.prev_refusal("run-1", D) is not None  # still only its own


def test_unchained_chains_verify_with_every_signature(tmp_path: Path) -> None:
    """Chains written before per-site chaining (no ``prev``) keep the old rule."""
    old = build_synthetic_run(tmp_path / "old", rounds=3, sites=3, chained=False)
    report = verify_run(old.run_dir)
    assert report.ok and report.site_signatures == 3 + 9, report.summary
    assert all("prev" not in c for e in read_chain(old.run_dir / "lineage.sqlite")
               if e["type"] == "round" for c in e["body"]["contributions"])


def _contribution(**change: object) -> dict:
    c = {"site_id": "site-000", "update_digest": D, "num_examples": 3, "data_fingerprint": D,
         "signature": "cd" * 64, "fate": "accepted", "score": None, "detail": {}, "prev": D}
    c.update(change)
    return {k: c[k] for k in sorted(c) if c[k] is not ...}


@pytest.mark.parametrize("change", [
    {}, {"prev": ...}, {"site_id": ""}, {"site_id": 3}, {"update_digest": D.upper()},
    {"update_digest": D[:-1]}, {"data_fingerprint": D + "0"}, {"signature": "CD" * 64},
    {"signature": "cd" * 63}, {"num_examples": -1}, {"num_examples": True},
    {"num_examples": None}, {"fate": "trusted"}, {"score": 0.5}, {"detail": []},
    {"prev": "sha256:" + "g" * 64}, {"prev": None}, {"extra": 1}, {"fate": ...},
    {"update_digest": "sha256:" + "ab" * 31 + "sha256:"},
])
def test_contributions_fast_path_never_accepts_what_the_reference_rejects(change: dict) -> None:
    cs = [_contribution(), _contribution(**change)]
    try:
        for i, c in enumerate(cs):
            validator_for(SiteContribution)(c, f"c[{i}]")
        reference = True
    except ValueError:
        reference = False
    assert not contributions_ok(cs) or reference, change


@pytest.mark.parametrize("value", [1e-5, 1e-7, 2.5e-5, 1e16, 1.5e20, 0.001, 0.1, 123.25, -0.0])
def test_canonical_fast_path_matches_the_reference(value: float) -> None:
    env = {"type": "round", "body": {"contributions": [_contribution()], "timings": {"x": value}}}
    data = canonical_json(env)
    assert is_canonical(env, data, float_residual(env))
    # the same value written by orjson's rules, where they differ from Python's, is not canonical
    other = data.replace(json.dumps(value).encode(), repr(value).replace("e-0", "e-").encode())
    assert is_canonical(env, other, float_residual(env)) == (other == data)


@pytest.mark.parametrize("value", [1e-5, 1e-7, 2.5e-5, 1e16, 1.5e20, 0.001, -0.0])
@pytest.mark.parametrize("where", ["timings", "metrics", "detail"])
def test_round_residual_keeps_every_float(pristine_run: SyntheticRun, value: float,
                                          where: str) -> None:
    """The checked round body's residual leaves out only what holds no float: a float
    written by orjson's rules where they differ from Python's is still caught."""
    env = next({k: e[k] for k in SIGNED_KEYS} for e in read_chain(
        pristine_run.run_dir / "lineage.sqlite") if e["type"] == "round")
    if where == "detail":
        env["body"]["contributions"][0]["detail"] = {"norm": value}
    else:
        env["body"][where] = {"x": value}
    data = canonical_json(env)
    columns = round_columns(env["body"])
    assert columns is not None
    assert is_canonical(env, data, round_residual(env, columns))
    other = data.replace(json.dumps(value).encode(), repr(value).replace("e-0", "e-").encode())
    assert is_canonical(env, other, round_residual(env, columns)) == (other == data)


def test_default_and_all_signature_modes_agree_on_a_pristine_run(
        pristine_run: SyntheticRun) -> None:
    a = verify_run(pristine_run.run_dir)
    b = verify_run(pristine_run.run_dir, all_signatures=True)
    assert a.ok and b.ok
    assert (a.server_signatures, b.server_signatures) == (1, 8)
    assert "default mode (every digest and link;" in a.summary
    assert "mode --all-signatures (every signature)" in b.summary

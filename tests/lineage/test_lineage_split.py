"""Two-process ``verify`` (``fedsilo.lineage.split``): a forked child checks the records
after a seam; the verdict, the first failure named and every count must be those of the
one-process walk, for every tamper-suite mutation and for seams at every record."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from test_lineage_tamper import DEFAULT_NOT_APPLICABLE, MUTATIONS, Mutation, reseal, server_key

from fedsilo.lineage import VerifyReport, read_chain, split, verify_run
from fedsilo.lineage.signing import attestation_digest, contribution_message
from fedsilo.lineage.synthetic import SyntheticRun, build_synthetic_run

CHILD_ENV = "FEDSILO_SPLIT_TESTS_CHILD"
"""Set in the fresh pytest process that `test_split_tests_run_in_a_fresh_process` starts."""


def _machine_can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and (os.cpu_count() or 1) >= 2


pytestmark = pytest.mark.skipif(not _machine_can_fork(), reason="needs fork and 2 cores")


@pytest.fixture(autouse=True)
def _single_threaded(request: pytest.FixtureRequest) -> None:
    """`split` forks only from a process with one Python thread. In a whole-suite run
    earlier tests leave threads behind (thread pools, engines' clients); the tests of this
    file then run in a fresh process instead (`test_split_tests_run_in_a_fresh_process`)."""
    if request.node.originalname == "test_split_tests_run_in_a_fresh_process":
        return
    if not split.can_fork():
        pytest.skip(f"{threading.active_count()} threads here: this file's tests run in a "
                    "fresh process (test_split_tests_run_in_a_fresh_process)")


def test_split_tests_run_in_a_fresh_process() -> None:
    """When this process cannot fork (other threads), every other test of this file runs
    in a fresh, single-threaded pytest process, and all of them must pass there."""
    if split.can_fork() or os.environ.get(CHILD_ENV):
        pytest.skip("this process can fork: the tests of this file run here directly")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, CHILD_ENV: "1"}, capture_output=True, text=True, timeout=1800,
        cwd=Path(__file__).resolve().parents[2])
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", last)
    assert passed and int(passed.group(1)) >= 200 and "failed" not in last, last


def _outcome(report: VerifyReport) -> tuple[Any, ...]:
    return (report.ok, report.first_failure, report.failed_seq, report.summary,
            report.site_signatures, report.server_signatures, report.rounds, report.closed,
            report.final_model_digest, report.notes)


class _Seams:
    """Forces the seam and counts the child walks the parent adopted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seam = 2
        self.adopted = 0
        adopt = split.adopt

        def counted(*args: Any) -> bool:
            ok = adopt(*args)
            self.adopted += ok
            return ok

        monkeypatch.setattr(split, "choose_seam", lambda rows, min_bytes=0: self.seam)
        monkeypatch.setattr(split, "adopt", counted)

    def same_as_one_process(self, run_dir: Path, seams: list[int]) -> None:
        one = _outcome(verify_run(run_dir, processes=1))
        for seam in seams:
            self.seam = seam
            report = verify_run(run_dir, processes=2)
            # no child when the genesis fails or no record follows the seam
            assert report.processes == 2 or report.failed_seq == 0 or seam >= report.records
            assert _outcome(report) == one, f"seam {seam}"


@pytest.fixture
def seams(monkeypatch: pytest.MonkeyPatch) -> _Seams:
    return _Seams(monkeypatch)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    """No resume record (so a seam may fall anywhere): a late joiner, rejections, a
    refusal and signed evaluations."""
    return build_synthetic_run(tmp_path_factory.mktemp("plain") / "run", rounds=6, sites=3,
                               late_joiner=True, reject_every=4, refuse=(3, 1),
                               evaluations=True)


def test_auto_mode_keeps_short_chains_and_all_signatures_in_one_process(
        pristine_run: SyntheticRun) -> None:
    assert verify_run(pristine_run.run_dir).processes == 1
    assert verify_run(pristine_run.run_dir, all_signatures=True, processes=2).processes == 1


def test_auto_mode_cuts_a_long_chain_after_its_last_resume(
        pristine_run: SyntheticRun, monkeypatch: pytest.MonkeyPatch) -> None:
    one = _outcome(verify_run(pristine_run.run_dir, processes=1))
    monkeypatch.setattr(split, "MIN_SPLIT_BYTES", 0)  # "long": any chain
    rows = [(i, t, None, None, "x" * 10) for i, t in enumerate(
        ["genesis", "round", "site_join", "round", "round", "resume", "round", "closing"])]
    assert split.choose_seam(rows, 0) == 6  # half the bytes is 4: after the resume
    report = verify_run(pristine_run.run_dir)
    assert report.processes == 2 and _outcome(report) == one


def test_pristine_runs_at_every_seam(pristine_run: SyntheticRun, plain_run: SyntheticRun,
                                     seams: _Seams) -> None:
    seams.same_as_one_process(pristine_run.run_dir, list(range(2, 8)))
    assert seams.adopted == 2  # seams 6 and 7; before them the resume is the child's
    seams.adopted = 0
    n = len(plain_run.digests)
    seams.same_as_one_process(plain_run.run_dir, list(range(2, n)))
    assert seams.adopted == n - 2


@pytest.mark.parametrize(
    "mut", [m for m in MUTATIONS if str(m) not in DEFAULT_NOT_APPLICABLE], ids=str)
def test_every_mutation_same_first_failure(run: SyntheticRun, mut: Mutation,
                                           seams: _Seams) -> None:
    kwargs = mut.apply(run) or {}
    if kwargs:  # a pinned key: compare with it
        one = _outcome(verify_run(run.run_dir, processes=1, **kwargs))
        for seam in (3, 6):
            seams.seam = seam
            assert _outcome(verify_run(run.run_dir, processes=2, **kwargs)) == one
        return
    # 3: the child meets the resume record and the parent walks on; 6: the child's walk
    # is adopted when its assumptions hold (seams at every record: test_state_across_...)
    seams.same_as_one_process(run.run_dir, [3, 6])


def _rechain(envs: list[dict], run_id: str, site: str, start: int) -> None:
    """Re-link ``site``'s attestations from record ``start`` on (after an edit)."""
    prev = None
    for e in envs[start:]:
        for c in e["body"].get("contributions", []) if e["type"] == "round" else []:
            if c["site_id"] == site:
                if prev is not None:
                    c["prev"] = prev
                prev = attestation_digest(contribution_message(
                    run_id, e["body"]["round"], c["update_digest"], c["data_fingerprint"],
                    c["prev"]))


def _edits(run: SyntheticRun) -> list[tuple[str, Any]]:
    """Key-holding edits of each round record j, resealed (only links and the state at the
    seam can catch them): its model_out, site-000's prev, site-000's attestation dropped."""
    out: list[tuple[str, Any]] = []
    rounds = [j for j, t in enumerate(_types(run)) if t == "round"]
    for j in rounds:
        def model(envs: list[dict], j: int = j) -> None:
            envs[j]["body"]["model_out"] = "sha256:" + "7" * 64

        def prev(envs: list[dict], j: int = j) -> None:
            c = next(c for c in envs[j]["body"]["contributions"] if c["site_id"] == "site-000")
            c["prev"] = "sha256:" + "5" * 64

        def dropped(envs: list[dict], j: int = j) -> None:
            cs = envs[j]["body"]["contributions"]
            cs[:] = [c for c in cs if c["site_id"] != "site-000"]
            body = envs[j]["body"]
            body["accepted"] = [s for s in body["accepted"] if s != "site-000"]
            _rechain(envs, run.run_id, "site-000", j + 1)

        out += [(f"model_out@{j}", model), (f"prev@{j}", prev), (f"dropped@{j}", dropped)]
    return out


def _types(run: SyntheticRun) -> list[str]:
    return [e["type"] for e in read_chain(run.run_dir / "lineage.sqlite")]


def test_state_across_the_seam(plain_run: SyntheticRun, tmp_path: Path,
                               seams: _Seams) -> None:
    """Edits that only the state carried over the seam exposes (the model chain, a site's
    attestation head), at every record and every seam."""
    n = len(plain_run.digests)
    for name, edit in _edits(plain_run):
        target = tmp_path / name
        shutil.copytree(plain_run.run_dir, target)
        run = SyntheticRun(target, plain_run.run_id, list(plain_run.site_ids),
                           list(plain_run.model_digests), list(plain_run.digests))
        reseal(run, server_key(run), edit)
        # dropping a site's last attestation leaves a valid chain (its ledger shows it)
        assert name == f"dropped@{n - 2}" or not verify_run(target, processes=1).ok, name
        seams.same_as_one_process(target, list(range(2, n)))

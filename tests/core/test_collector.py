"""`fedsilo.server.collector`: a run's long-lived objects are frozen out of the cyclic
garbage collector after its first round and given back when the run ends."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from fedsilo.server.collector import FrozenObjects
from fedsilo.server.config import RunConfig
from fedsilo.server.loop import RoundSummary
from fedsilo.simulations.runner import run_federation


def test_holders_share_one_freeze_and_the_last_release_unfreezes() -> None:
    assert gc.get_freeze_count() == 0
    a, b = FrozenObjects(), FrozenObjects()
    a.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # at least the modules' functions and classes
    b.freeze()
    a.freeze()  # idempotent for one holder
    a.release()
    assert gc.get_freeze_count() > frozen // 2  # b still holds the freeze
    a.release()  # a second release of one holder changes nothing
    assert gc.get_freeze_count() > frozen // 2
    b.release()
    assert gc.get_freeze_count() == 0


def test_a_run_freezes_after_its_first_round_and_unfreezes_at_its_end(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    cfg = RunConfig.load(None, {"sites": 3, "rounds": 3, "out": str(tmp_path), "run_id": "gc"})
    run_federation(cfg, engine="inprocess",
                   on_round=lambda s: seen.append((s.round, gc.get_freeze_count())))
    # the hook runs before the freeze of its own round
    assert [r for r, _ in seen] == [1, 2, 3]
    # (frozen objects freed by their reference count leave the permanent generation)
    assert seen[0][1] == 0 and seen[1][1] > 1000 and seen[2][1] > 1000
    assert gc.get_freeze_count() == 0


def test_a_run_that_fails_after_the_freeze_still_unfreezes(tmp_path: Path) -> None:
    def hook(summary: RoundSummary) -> None:
        if summary.round == 2:
            assert gc.get_freeze_count() > 1000
            raise RuntimeError("operator hook failed in round 2")

    cfg = RunConfig.load(None, {"sites": 3, "rounds": 4, "out": str(tmp_path), "run_id": "gc-err"})
    with pytest.raises(RuntimeError, match="operator hook failed in round 2"):
        run_federation(cfg, engine="inprocess", on_round=hook)
    assert gc.get_freeze_count() == 0

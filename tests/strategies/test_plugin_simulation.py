"""A third-party aggregator package, installed as a distribution with an entry point in
the ``fedsilo.aggregators`` group, runs a whole simulated federation.

The package is written to a temporary directory exactly as pip would install it
(the package and its ``.dist-info`` with ``entry_points.txt``) and that directory is put
on ``sys.path``: `importlib.metadata` then discovers it like any installed distribution,
without touching the shared virtualenv.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

PLUGIN = '''
from typing import ClassVar

import numpy as np

from fedsilo.strategies import AggregateResult, Aggregator, Param, UpdateBatch


class HalfMean(Aggregator):
    """Weighted mean scaled by ``factor`` (a toy third-party rule)."""

    name: ClassVar[str] = "half_mean"
    summary: ClassVar[str] = "weighted mean times factor (plugin demo)"
    params: ClassVar[dict[str, Param]] = {"factor": Param(float, 0.5, "scale of the mean")}
    needs_individual_updates: ClassVar[bool] = False

    def aggregate(self, batch: UpdateBatch) -> AggregateResult:
        self.validate(batch.n)
        w = batch.weights / batch.weights.sum()
        update = np.float32(self.factor) * (w.astype(np.float32) @ batch.stacked)
        return AggregateResult(update=update.astype(np.float32), fates=["plugin-ok"] * batch.n,
                               scores=[float(x) for x in w], info={"plugin": True})
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pkg = tmp_path / "fedsilo_halfmean"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "fedsilo_halfmean-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsilo-halfmean\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedsilo.aggregators]\nhalf_mean = fedsilo_halfmean:HalfMean\n"
    )
    (info / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield "half_mean"
    sys.modules.pop("fedsilo_halfmean", None)


def test_plugin_is_listed(installed_plugin: str) -> None:
    from fedsilo.strategies.registry import aggregators, make_aggregator

    assert installed_plugin in aggregators()
    assert make_aggregator("half_mean:factor=0.25").factor == 0.25


@pytest.mark.slow  # a whole (small) federation: seconds when the machine is idle
def test_plugin_runs_a_simulated_federation(installed_plugin: str, tmp_path: Path) -> None:
    runner = pytest.importorskip("fedsilo.simulations.runner")
    from fedsilo.server.config import RunConfig

    config = RunConfig.load(None, {
        "dataset": "wine", "sites": 3, "rounds": 2, "task_options": {"partition": "iid"}, "seed": 1,
        "aggregator": "half_mean:factor=0.5", "out": str(tmp_path / "runs"), "run_id": "plugin",
    })
    run = runner.run_federation(config, engine="inprocess")
    assert [r.status for r in run.rounds] == ["completed", "completed"]
    assert all(r.accepted == 3 for r in run.rounds)
    assert run.final_accuracy is not None
    assert "half_mean" in (run.run_dir / "config.toml").read_text()

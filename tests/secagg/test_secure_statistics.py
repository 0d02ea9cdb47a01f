"""Federated statistics summed under SecAgg+ when the run's SecAgg+ is on.

The tabular task's standardisation statistics (per-site counts, sums and sums of
squares) are summed by one SecAgg+ exchange of their own before round 1: the server
learns only the sum. Checked on a run of the real ServerApp and ClientApp (fedsilo's
in-process engine, as the other simulation tests): the run completes, the sum equals the
clear sum to the stated precision, and no message the server reads carries a site's
statistics (its clear replies hold their layout only; its masked inputs are masked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message

from fedsilo.client.secagg_statistics import statistics_reply
from fedsilo.privacy.secagg.records import MASKED_DTYPE, decode_reply
from fedsilo.tasks.base import SiteData
from fedsilo.tasks.statistics import (
    LAYOUT_KEY,
    SECURE_CLIP,
    SECURE_MESSAGE_TYPES,
    STATISTICS_KEY,
    STATISTICS_RECORD,
    StatisticsError,
    layout_of,
    secure_sum,
    secure_vector,
    sum_statistics,
)
from fedsilo.tasks.tabular import TabularTask


def _tolerance(sites: int) -> dict[str, float]:
    """The stated precision (`fedsilo.tasks.statistics`): within sites * 2^-33 of the
    exact sum; the clear float64 sum adds its own rounding (relative, a few ulps)."""
    return {"atol": sites * 2.0 ** -32, "rtol": 1e-12}


def test_exact_encoding_sums_counts_sums_and_squares() -> None:
    rng = np.random.default_rng(5)
    sites = [{"count": np.array([float(rng.integers(1, 10**6))] * 3),
              "sum": rng.normal(0, 1e7, 3), "sumsq": rng.uniform(0, 1e15, 3),
              "tiny": rng.normal(0, 1e-6, (2, 2))} for _ in range(9)]
    layout = layout_of(sites[0])
    # what a SecAgg+ sum of the quantised inputs gives: the quantiser's scale is 1, so
    # each site's level is its limb (input + SECURE_CLIP), and the server dequantises
    levels = [secure_vector(s, layout) + SECURE_CLIP for s in sites]
    assert all(np.array_equal(lv, np.rint(lv)) and lv.min() >= 0 and lv.max() <= 2**16 - 1
               for lv in levels)
    total = secure_sum(sum(levels) - len(sites) * SECURE_CLIP, len(sites), layout)
    clear = sum_statistics([(str(i), s) for i, s in enumerate(sites)])
    for name in clear:
        np.testing.assert_allclose(total[name], clear[name], **_tolerance(len(sites)))
    assert total["count"].tolist() == clear["count"].tolist()  # integer counts: exact
    negative = {"a": np.array([-3.25, -1e15, 0.0])}
    back = secure_sum(secure_vector(negative, layout_of(negative)), 1, layout_of(negative))
    assert back["a"].tolist() == [-3.25, -1e15, 0.0]
    with pytest.raises(StatisticsError, match="differ from the announced layout"):
        secure_vector({"b": np.zeros(2)}, layout)
    with pytest.raises(StatisticsError, match="below 2\\^63"):
        secure_vector({"a": np.array([1e19])}, [("a", (1,))])


def test_a_site_never_sends_its_statistics_in_clear_under_secagg() -> None:
    stats = {"count": np.array([3.0]), "sum": np.array([1.5])}
    clear = statistics_reply("a", stats, {"secagg": False}, False)[STATISTICS_RECORD]
    assert json.loads(str(clear[STATISTICS_KEY]))["sum"]["values"] == [1.5]
    secure = statistics_reply("a", stats, {"secagg": True}, False)[STATISTICS_RECORD]
    assert secure[STATISTICS_KEY] == "" and "1.5" not in json.dumps(dict(secure))
    assert json.loads(str(secure[LAYOUT_KEY])) == [["count", [1]], ["sum", [1]]]
    with pytest.raises(StatisticsError, match="^site a: its policy requires SecAgg\\+; it "
                                              "does not send its statistics in clear$"):
        statistics_reply("a", stats, {"secagg": False}, True)


def _sites(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(11)
    paths = {}
    for name, suffix, n in (("a", ".csv", 50), ("b", ".parquet", 70), ("c", ".csv", 90)):
        age = rng.uniform(20, 90, n)
        frame = pd.DataFrame({"age": (age * 1000.0).round(1), "bmi": rng.normal(27, 4, n),
                              "sex": rng.choice(["F", "M"], n),
                              "y": (age + rng.normal(0, 8, n) > 55).astype(int)})
        path = folder / f"{name}{suffix}"
        frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
        paths[name] = path
    return paths


def test_tabular_statistics_summed_under_secagg_in_a_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsilo import lineage
    from fedsilo.cli import main
    from fedsilo.server import secagg_stages, task_round

    folder = tmp_path / "sites"
    folder.mkdir()
    paths = _sites(folder)
    seen: list[tuple[str, Message]] = []  # every reply of the statistics' messages

    def recording(original: Any) -> Any:
        def send_and_receive(grid: Any, messages: Any, **kw: Any) -> list[Message]:
            messages = list(messages)
            kinds = {int(m.metadata.dst_node_id): m.metadata.message_type for m in messages}
            replies = original(grid, messages, **kw)
            seen.extend((kinds.get(int(r.metadata.src_node_id), ""), r) for r in replies)
            return replies
        return send_and_receive

    monkeypatch.setattr(task_round, "send_and_receive", recording(task_round.send_and_receive))
    monkeypatch.setattr(secagg_stages, "send_and_receive",
                        recording(secagg_stages.send_and_receive))
    run = tmp_path / "run.toml"
    options = {"kind": "binary", "label": "y", "data": str(folder),
               "features": {"age": "numeric", "bmi": "numeric", "sex": ["F", "M"]}}
    run.write_text("rounds = 2\nlr = 0.3\neval_every = 2\n\n[task_options]\n"
                   f'kind = "binary"\nlabel = "y"\ndata = "{folder}"\n'
                   'features = {age = "numeric", bmi = "numeric", sex = ["F", "M"]}\n')
    out = tmp_path / "runs"
    code = main(["simulate", "--task", "tabular", "--config", str(run), "--secagg",
                 "--engine", "inprocess", "--out", str(out), "--run-id", "s", "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "s" / "metrics.json").read_text())
    assert metrics["closing_reason"] == "completed"

    # the standardisation statistics: the clear sum of each site's own sums, to the
    # stated precision, summed under SecAgg+ (lineage says so)
    task = TabularTask(options)
    per_site = {s: task.site_statistics(SiteData(s, {"path": str(p)})) for s, p in paths.items()}
    clear = sum_statistics(list(per_site.items()))
    recorded = lineage.read_chain(out / "s" / "lineage.sqlite")[0]["body"]["task"]["statistics"]
    assert recorded["summed"] == "secagg+" and recorded["sites"] == 3
    for name, value in clear.items():
        np.testing.assert_allclose(recorded["values"][name], value, **_tolerance(3))

    # what the server read: layouts in clear, masked vectors, never a site's sums
    clear_replies = [r for kind, r in seen if kind == "query.statistics"]
    assert len(clear_replies) == 3
    for reply in clear_replies:
        rec = reply.content[STATISTICS_RECORD]
        assert isinstance(rec, ConfigRecord) and rec[STATISTICS_KEY] == "" and LAYOUT_KEY in rec
    secure = [(kind, r) for kind, r in seen if kind in SECURE_MESSAGE_TYPES.values()]
    assert {kind for kind, _ in secure} == set(SECURE_MESSAGE_TYPES.values())
    layout = layout_of(clear)
    levels = [(secure_vector(s, layout) + SECURE_CLIP).astype(MASKED_DTYPE)
              for s in per_site.values()]
    masked = [decode_reply("masked", r.content, 1) for kind, r in secure
              if kind == SECURE_MESSAGE_TYPES["masked"]]
    assert len(masked) == 3
    for reply in masked:
        vector = np.asarray(reply.masked, dtype=MASKED_DTYPE)[:len(levels[0])]
        assert not any(np.array_equal(vector, lv) for lv in levels)
        assert np.count_nonzero(vector > 2**16) > len(vector) // 2  # masks fill the ring
    for _, reply in secure:
        assert STATISTICS_RECORD not in reply.content

"""Specs, the registry, entry points and `fedsilo strategies`."""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint

import numpy as np
import pytest
from data import random_batch

from fedsilo.strategies import (
    SettingError,
    add_strategies_parser,
    make_aggregator,
    make_optimizer,
    parse_spec,
    registry,
)
from fedsilo.strategies.registry import aggregators, optimizers


def test_parse_spec() -> None:
    assert parse_spec("trimmed_mean:beta=0.2") == ("trimmed_mean", {"beta": "0.2"})
    assert parse_spec(" multi_krum:f=4, m=10 ") == ("multi_krum", {"f": "4", "m": "10"})
    assert parse_spec("median") == ("median", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "strategy spec is empty"),
        (":beta=1", "has no name"),
        ("krum:f", "'f' is not key=value"),
        ("krum:=3", "'=3' is not key=value"),
        ("krum:f=1,f=2", "parameter 'f' given twice"),
        ("krum:", "has ':' but no parameters"),
    ],
)
def test_malformed_specs(text: str, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        parse_spec(text)


def test_unknown_names_and_parameters_list_what_is_accepted() -> None:
    with pytest.raises(SettingError, match="unknown aggregator 'krumm'; installed: bulyan, "):
        make_aggregator("krumm")
    with pytest.raises(SettingError, match="trimmed_mean: unknown parameter\\(s\\) alpha; accepted: beta"):
        make_aggregator("trimmed_mean:alpha=0.1")
    with pytest.raises(SettingError, match="unknown optimizer 'sgd'; installed: fedadagrad, fedadam"):
        make_optimizer("sgd")


def test_specs_set_typed_parameters() -> None:
    agg = make_aggregator("multi_krum:f=4,m=10")
    assert (agg.f, agg.m) == (4, 10) and agg.config() == {"f": 4, "m": 10}
    assert repr(make_aggregator("trimmed_mean")) == "trimmed_mean:beta=0.2"
    opt = make_optimizer("fedadam:eta=0.01")
    assert opt.eta == 0.01 and opt.beta_2 == 0.99


def test_builtin_names() -> None:
    assert set(aggregators()) == {
        "mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan",
        "geometric_median", "centered_clipping", "norm_bounding", "fltrust",
    }
    assert set(optimizers()) == {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}


def _fake_entry_points(value: str):
    def entry_points(group: str):
        if group == registry.AGGREGATOR_GROUP:
            return [EntryPoint(name="first_row", value=value, group=group)]
        return []

    return entry_points


def test_entry_point_plugin_is_found_and_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "entry_points", _fake_entry_points("plugin_demo:FirstRow"))
    assert "first_row" in aggregators()
    batch = random_batch(3)
    out = make_aggregator("first_row:scale=2").aggregate(batch).update
    np.testing.assert_array_equal(out, 2 * batch.updates[0])


def test_entry_point_that_is_not_an_aggregator_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "entry_points", _fake_entry_points("plugin_demo:NotAnAggregator"))
    with pytest.raises(SettingError, match="entry point 'first_row' in fedsilo.aggregators is .*not a Aggregator subclass"):
        aggregators()


def test_strategies_command_lists_everything(monkeypatch, capsys) -> None:
    monkeypatch.setattr(registry, "entry_points", _fake_entry_points("plugin_demo:FirstRow"))
    parser = argparse.ArgumentParser(prog="fedsilo")
    add_strategies_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["strategies"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "trimmed_mean  coordinate-wise mean after cutting the beta fraction at each end" in out
    assert "beta (float, default 0.2): fraction cut at each end of every coordinate, in [0, 0.5)" in out
    assert "fedadam  server Adam" in out and "eta (float, default 0.1): server learning rate" in out
    assert "first_row  the first update, scaled" in out
    assert "[sum suffices (works under secure aggregation)]" in out

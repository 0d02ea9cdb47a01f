"""The run's monitor (issue 23, points 1 and 3): flags from synthetic round views with a
known fault injected, the policy's actions, and ``[monitor]`` validation."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.governance.flags import MonitorConfig, MonitorConfigError
from fedsilo.governance.monitor import Monitor, RoundView

SITES = [f"site-{i:03d}" for i in range(10)]


def _view(r: int, rng: np.random.Generator, **changes) -> RoundView:
    """A clean round: every site replies, norms spread ~30% around a slowly shrinking
    scale, cosines to the aggregate between 0.1 and 0.9."""
    view = RoundView(round=r, sampled=list(SITES), replied=list(SITES), site_ids=list(SITES),
                     norms=np.exp(rng.normal(np.log(5.0 / r), 0.3, len(SITES))),
                     cosines=rng.uniform(0.1, 0.9, len(SITES)), loss=1.0 / r,
                     site_scores={s: 0.8 + 0.1 * rng.random() for s in SITES})
    for key, value in changes.items():
        setattr(view, key, value)
    return view


def _run(monitor: Monitor, rounds: int, inject=None, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    flags = []
    for r in range(1, rounds + 1):
        view = _view(r, rng)
        if inject is not None:
            inject(r, view)
        flags += monitor.observe(view)
    return flags


def test_clean_rounds_raise_no_flag():
    flags = [f for seed in range(5) for f in _run(Monitor(MonitorConfig()), 30, seed=seed)]
    assert flags == []


def test_free_rider_is_flagged_in_its_first_round():
    def free_ride(r, view):
        if r >= 4:
            view.norms[3] = 0.0

    flags = _run(Monitor(MonitorConfig()), 6, free_ride)
    assert [(f.code, f.site, f.round, f.severity) for f in flags] == [
        ("free_rider", "site-003", r, "error") for r in (4, 5, 6)]
    assert flags[0].evidence["norm"] == 0.0 and flags[0].evidence["threshold"] == 0.001


def test_scaled_update_is_a_norm_outlier_and_sign_flip_opposes():
    def attack(r, view):
        if r >= 5:
            view.norms[7] *= 50.0
            view.cosines[2] = -0.9

    flags = _run(Monitor(MonitorConfig()), 6, attack)
    assert {(f.code, f.site, f.round) for f in flags} == {
        ("update_norm_outlier", "site-007", 5), ("update_norm_outlier", "site-007", 6),
        ("update_opposes_aggregate", "site-002", 5), ("update_opposes_aggregate", "site-002", 6)}


def test_an_update_that_copies_the_peers_aggregate_is_flagged_but_iid_alignment_is_not():
    rng = np.random.default_rng(4)
    skewed = rng.uniform(0.2, 0.6, len(SITES))  # honest sites under label skew
    skewed[3] = 0.98  # "a little is enough" at z = 0: the honest mean itself
    flags = Monitor(MonitorConfig()).observe(_view(1, rng, cosines=skewed))
    assert [(f.code, f.site) for f in flags] == [("update_mimics_peers", "site-003")]
    assert flags[0].evidence["cosine"] == 0.98
    aligned = rng.uniform(0.9, 0.99, len(SITES))  # IID: every honest site is this aligned
    assert Monitor(MonitorConfig()).observe(_view(1, rng, cosines=aligned)) == []


def test_repeated_rejections_and_dropouts():
    def misbehave(r, view):
        view.rejected = {"site-001": "update is not finite"}
        view.replied = [s for s in SITES if s != "site-004"]

    flags = _run(Monitor(MonitorConfig()), 4, misbehave)
    assert [(f.code, f.site, f.round) for f in flags] == [
        ("repeated_rejections", "site-001", 3), ("repeated_dropouts", "site-004", 3)]


def test_site_score_drop_fairness_gap_and_divergence():
    def degrade(r, view):
        if r == 5:
            view.site_scores["site-006"] = 0.2
            view.loss = 10.0

    flags = _run(Monitor(MonitorConfig()), 5, degrade)
    assert [(f.code, f.site, f.round) for f in flags] == [
        ("site_metric_drop", "site-006", 5), ("fairness_gap", "site-006", 5),
        ("loss_diverging", None, 5)]
    nan = _run(Monitor(MonitorConfig()), 2, lambda r, v: setattr(v, "loss", float("nan")))
    assert [(f.code, f.evidence) for f in nan] == [("loss_diverging", {"loss": "nan"})] * 2


def test_privacy_flags():
    def spend(r, view):
        view.budget_fraction = r / 5
        view.privacy_refusals = ["site-009"] if r == 2 else []

    flags = _run(Monitor(MonitorConfig()), 5, spend)
    assert [(f.code, f.site, f.round) for f in flags] == [
        ("site_privacy_refusal", "site-009", 2), ("budget_nearly_spent", None, 4)]


def test_secagg_runs_only_the_flags_that_need_no_update():
    def free_ride(r, view):
        view.norms[3] = 0.0

    monitor = Monitor(MonitorConfig(), secagg=True)
    assert _run(monitor, 3, free_ride) == []
    assert "free_rider" not in monitor.applicable_codes()
    assert "repeated_dropouts" in monitor.applicable_codes()


def test_policies_exclude_or_stop():
    def free_ride(r, view):
        view.norms[3] = 0.0

    exclude = Monitor(MonitorConfig(on_error="exclude_site"))
    flags = _run(exclude, 1, free_ride)
    assert flags[0].action == "site excluded for the rest of the run"
    assert exclude.excluded == {"site-003": "free_rider"} and exclude.stop_reason is None
    stop = Monitor(MonitorConfig(on_error="stop"))
    assert _run(stop, 1, free_ride)[0].action == "run stopped"
    assert stop.stop_reason == "monitor flag free_rider (round 1, site site-003)"
    lenient = Monitor(MonitorConfig(on_error="stop", severity={"free_rider": "warning"}))
    assert _run(lenient, 1, free_ride)[0].action == "none" and lenient.stop_reason is None


@pytest.mark.parametrize(("raw", "message"), [
    ({"norm_zz": 3}, "monitor.norm_zz: unknown option (expected one of "),
    ({"severity": {"free_riding": "error"}}, "monitor.severity.free_riding: unknown flag code"),
    ({"severity": {"free_rider": "fatal"}},
     "monitor.severity.free_rider: unknown severity 'fatal' (expected info, warning or error)"),
    ({"on_error": "panic"},
     "monitor.on_error: 'panic' is not a policy (expected warn, exclude_site or stop)"),
    ({"window": "five"}, "monitor.window: expected a int, got 'five'"),
])
def test_bad_monitor_config_is_one_line(raw, message):
    with pytest.raises(MonitorConfigError) as err:
        MonitorConfig.from_dict(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)

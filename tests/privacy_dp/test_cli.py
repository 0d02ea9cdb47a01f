"""`fedsilo privacy calibrate`."""

from __future__ import annotations

import json

import pytest

from fedsilo.privacy.cli import main


def test_calibrate_prints_noise_multiplier(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "privacy",
        "calibrate",
        "--epsilon",
        "3",
        "--delta",
        "1e-5",
        "--rounds",
        "100",
        "--sample-rate",
        "0.1",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("noise_multiplier = 1.7961")
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["noise_multiplier"] == pytest.approx(1.79615, abs=1e-4)
    assert out["epsilon"] <= 3 and out["accountant"] == "dp_accounting.rdp/poisson"


def test_calibrate_bad_delta_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "privacy",
        "calibrate",
        "--epsilon",
        "3",
        "--delta",
        "2",
        "--rounds",
        "10",
        "--sample-rate",
        "0.1",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: delta: expected a number strictly between 0 and 1, got 2.0\n"
    )

"""The `Trainer` protocol of the site SDK (defined in `fedsilo.tasks.trainer`, re-exported).

A Task builds each site's Trainer, so the protocol and its result types live below the
client in `fedsilo.tasks`; site code keeps importing them from here.
"""

from __future__ import annotations

from fedsilo.tasks.trainer import (
    DeclaresExamples,
    EvalResult,
    FitResult,
    KeepsState,
    Trainer,
    Weights,
)

__all__ = ["DeclaresExamples", "EvalResult", "FitResult", "KeepsState", "Trainer", "Weights"]

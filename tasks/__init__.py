"""Tasks: what a federation learns (the Task interface, its registry and built-in tasks)."""

from fedsilo.tasks.base import SiteData, Task, TaskIdentity, layout_digest, statistics_digest
from fedsilo.tasks.registry import BUILTINS, TaskError, resolve_task
from fedsilo.tasks.trainer import DeclaresExamples, EvalResult, FitResult, Trainer, Weights

__all__ = ["BUILTINS", "DeclaresExamples", "EvalResult", "FitResult", "SiteData", "Task",
           "TaskError", "TaskIdentity", "Trainer", "Weights", "layout_digest", "resolve_task",
           "statistics_digest"]

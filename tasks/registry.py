"""`resolve_task`: a task spec (a built-in name or ``module:object``) -> a `Task`.

Built-in names: the bundled datasets (``digits``, ``breast_cancer``, ``wine``,
``mnist1d``), ``tabular`` (`fedsilo.tasks.tabular:TabularTask`) and ``torch`` (a user
module's model, loss and data loader: `fedsilo.tasks.torch_module`), the last two
imported only when asked for. ``module:object`` names a `Task` instance, a `Task`
subclass (called with the options) or a callable ``options -> Task``. Every failure is a `TaskError` of one
line naming the spec and what was expected.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from fedsilo.common.errors import FedsiloError
from fedsilo.tasks.base import Task
from fedsilo.tasks.datasets import DATASETS

LAZY_BUILTINS = {"tabular": "fedsilo.tasks.tabular:TabularTask",
                 "torch": "fedsilo.tasks.torch_module:TorchModuleTask"}
BUILTINS = (*DATASETS, *LAZY_BUILTINS)


class TaskError(FedsiloError, ValueError):
    """A task spec cannot be resolved to a Task (one line, names the spec)."""


def resolve_task(spec: str, options: Mapping[str, Any] | None = None) -> Task:
    """The `Task` named by ``spec``, built with ``options`` (the ``[task_options]`` table)."""
    options = dict(options or {})
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task: expected a built-in name ({', '.join(BUILTINS)}) or "
                        f"'module:object', got {spec!r}")
    if spec in DATASETS:
        from fedsilo.tasks.bundled import BundledTask

        try:
            return BundledTask(spec, options)
        except ValueError as exc:
            raise TaskError(str(exc)) from None
    if spec in LAZY_BUILTINS:
        return _named(spec, LAZY_BUILTINS[spec], options)
    if ":" not in spec:
        raise TaskError(f"task: unknown task {spec!r}; built-in tasks: {', '.join(BUILTINS)}; "
                        "or name your own as 'module:object'")
    return _named(spec, spec, options)


def _named(spec: str, target: str, options: dict[str, Any]) -> Task:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr or ":" in attr:
        raise TaskError(f"task {spec!r}: expected 'module:object'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code: one line, not a traceback
        raise TaskError(f"task {spec!r}: cannot import module {module_name!r} "
                        f"({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return _instantiate(spec, obj, options)


def _instantiate(spec: str, obj: Any, options: dict[str, Any]) -> Task:
    if isinstance(obj, Task):
        if options:
            raise TaskError(f"task {spec!r}: is a Task instance and takes no task_options "
                            f"(got {sorted(options)})")
        return obj
    if not callable(obj):
        raise TaskError(f"task {spec!r}: is a {type(obj).__name__}, expected a Task, a Task "
                        "subclass or a function returning a Task")
    try:
        task = obj(options) if _takes_argument(obj) else obj()
    except (TypeError, ValueError, KeyError) as exc:
        raise TaskError(f"task {spec!r}: failed with [task_options] {options}: {exc}") from None
    if not isinstance(task, Task):
        raise TaskError(f"task {spec!r}: returned {type(task).__name__}, expected a "
                        "fedsilo.tasks.Task")
    if not task.name:
        task.name = spec
    return task


def _takes_argument(obj: Any) -> bool:
    """Whether ``obj`` is called with the options (a Task subclass or factory taking one
    parameter) or without (one that takes none)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)

"""The server's Task: resolved from the run config, its initial model (or ``init_model``).

Used by the simulation runner and by the deployed ServerApp alike: the same task name
and options give the same initial model, identity and central evaluator everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.server.config import SIMULATION_ONLY, ConfigError, RunConfig
from fedsilo.tasks import Task, TaskError, resolve_task
from fedsilo.tasks.datasets import DATASETS

Weights = dict[str, np.ndarray]


def task_options(config: RunConfig) -> dict[str, Any]:
    """The options the run's task is built with: for a bundled task the run's ``hidden``
    and ``seed`` unless ``[task_options]`` sets them; otherwise ``[task_options]`` as given."""
    if config.task in DATASETS:
        return {"hidden": config.hidden, "seed": config.seed, **config.task_options}
    if config.task == "torch":  # sites in other processes (Ray workers) import it by path
        from fedsilo.tasks.torch_module import module_path_absolute

        return module_path_absolute(config.task_options, Path.cwd())
    return dict(config.task_options)


def demo_partition(config: RunConfig) -> str:
    """How the run's data is split over simulated sites and demo ``partition-id`` nodes:
    a bundled task's ``[task_options] partition`` (its default when unset); for other
    tasks a simulation's own split (`fedsilo.simulations.config.SimulationConfig.partition`),
    else the default. `ConfigError` (``--task: ...``) when the option is malformed."""
    from fedsilo.tasks.bundled import DEFAULT_PARTITION
    from fedsilo.tasks.bundled import demo_partition as bundled_partition

    if config.task in DATASETS:
        try:
            return bundled_partition(config.task_options, config.task)
        except ValueError as exc:
            raise ConfigError(f"--task: {exc}") from None
    return str(getattr(config, "partition", DEFAULT_PARTITION))


def run_task(config: RunConfig) -> Task:
    """The run's `Task`; `ConfigError` (``--task: ...``, one line) when it cannot be built."""
    try:
        return resolve_task(config.task, task_options(config))
    except TaskError as exc:
        raise ConfigError(f"--task: {exc}") from None


@dataclass
class ServerTask:
    """What the server takes from the task: initial model, identity, evaluator, frozen layers."""

    task: Task
    initial_weights: Weights
    identity: dict[str, str]
    frozen_layers: tuple[str, ...]
    evaluate_fn: Callable[[Weights], tuple[float, float]] | None
    baseline: dict[str, Any] | None = None
    """The drift check's ``--baseline`` run (`fedsilo.governance.baseline.load_baseline`)."""
    drift: bool = False
    """The monitor's drift check is on (``[monitor] enabled`` and ``drift``)."""

    @property
    def wants_statistics(self) -> bool:
        """Whether the task overrides `Task.site_statistics` (then the server queries it)."""
        return type(self.task).site_statistics is not Task.site_statistics

    @property
    def wants_profile(self) -> bool:
        """Whether the run checks drift: the monitor's drift check is on and the task
        overrides `Task.data_profile` (then the sites send their profiles)."""
        return self.drift and type(self.task).data_profile is not Task.data_profile


def server_task(config: RunConfig) -> ServerTask:
    """Resolve the task, load ``init_model`` when set, check frozen layers; `ConfigError`."""
    task = run_task(config)
    try:
        weights = task.initial_weights()
    except Exception as exc:  # user code: one line naming the task
        raise ConfigError(f"--task: {config.task}: initial_weights() failed "
                          f"({type(exc).__name__}: {exc})") from None
    identity = task.identity().to_dict()  # of the task's own model layout: init_model must match
    if config.init_model:
        weights = load_init_model(Path(config.init_model), weights)
    unknown = sorted(set(task.frozen_layers) - set(weights))
    if unknown:
        raise ConfigError(f"--task: {config.task}: frozen_layers {unknown} are not layers of "
                          f"its model ({', '.join(weights)})")
    central = task.central_evaluator()
    monitor = config.monitor_config()
    unreleased = _unreleased_dp(config)
    if unreleased is not None and monitor.baseline:
        level, flag = ("client", "--dp") if unreleased == "dp" else ("record", "--record-dp")
        raise ConfigError(f"--baseline: a {level}-level DP run checks drift only when it "
                          "releases its sites' data profiles, which spends budget; set "
                          f"{flag}-profile-noise-multiplier ([{unreleased}] "
                          "profile_noise_multiplier), e.g. 5")
    return ServerTask(task, weights, identity, tuple(task.frozen_layers),
                      None if central is None else _loss_and_accuracy(central),
                      baseline=_baseline(monitor.baseline, identity) if monitor.enabled else None,
                      drift=monitor.enabled and monitor.drift and unreleased is None)


def _unreleased_dp(config: RunConfig) -> str | None:
    """The DP table (``dp``, ``record_dp``) of a run whose profiles would be a release it
    does not say the noise of (then it checks no drift), else None. Under DP a profile is
    a release the budget pays for: client level, the sites' noisy sum; record level, each
    site's profile noised at the site."""
    for table, settings in (("dp", config.dp), ("record_dp", config.record_dp)):
        if settings.enabled and settings.profile_noise_multiplier is None:
            return table
    return None


def profile_releases(config: RunConfig, profiled: bool) -> tuple[float, ...]:
    """The client-level DP releases a run makes: its sites' data profiles' noisy sum when
    the run checks drift (``profiled``: `ServerTask.wants_profile`) under ``[dp]``."""
    z = config.dp.profile_noise_multiplier
    return (float(z),) if profiled and config.dp.enabled and z is not None else ()


def _baseline(path: str, identity: dict[str, str]) -> dict[str, Any] | None:
    """The ``--baseline`` run's profiles, checked once here; `ConfigError` (one line)."""
    if not path:
        return None
    from fedsilo.governance.baseline import BaselineError, load_baseline

    try:
        return load_baseline(path, identity)
    except BaselineError as exc:
        raise ConfigError(str(exc)) from None


def _loss_and_accuracy(evaluate: Callable[[Weights], Mapping[str, float]]
                       ) -> Callable[[Weights], tuple[float, float]]:
    """The round loop's central evaluation form: (loss, accuracy); a task without
    accuracy reports its first other metric there (NaN when it has none)."""
    def evaluate_fn(weights: Weights) -> tuple[float, float]:
        out = dict(evaluate(weights))
        loss = float(out.pop("loss", float("nan")))
        score = out.get("accuracy", next(iter(out.values()), float("nan")))
        return loss, float(score)

    return evaluate_fn


def load_init_model(path: Path, expected: Mapping[str, np.ndarray]) -> Weights:
    """The initial model from ``path`` (``.npz`` of named arrays or a torch ``.pt``
    state_dict), checked layer by layer against the task's model; `ConfigError` naming
    the first layer that differs. Values are cast to the task's dtypes."""
    loaded = _read_model_file(path)
    for name, ref in expected.items():
        if name not in loaded:
            raise ConfigError(f"--init-model: {path}: layer {name!r} of the task's model is "
                              f"missing (the file has {', '.join(loaded) or 'no layers'})")
        if tuple(loaded[name].shape) != tuple(ref.shape):
            raise ConfigError(f"--init-model: {path}: layer {name!r} has shape "
                              f"{tuple(loaded[name].shape)}; the task's model expects {tuple(ref.shape)}")
    extra = [k for k in loaded if k not in expected]
    if extra:
        raise ConfigError(f"--init-model: {path}: layer {extra[0]!r} is not in the task's model "
                          f"(its layers: {', '.join(expected)})")
    out = {}
    for name, ref in expected.items():
        arr = np.asarray(loaded[name])
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"--init-model: {path}: layer {name!r} has non-finite values")
        out[name] = arr.astype(ref.dtype, copy=True)
    return out


def _read_model_file(path: Path) -> Weights:
    if not path.is_file():
        raise ConfigError(f"--init-model: {path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--init-model: {path}: not a readable .npz ({exc})") from None
    if suffix in (".pt", ".pth"):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a foreign or torn file
            raise ConfigError(f"--init-model: {path}: not a readable torch file "
                              f"({type(exc).__name__}: {exc})") from None
        if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
            raise ConfigError(f"--init-model: {path}: expected a state_dict (layer name -> "
                              "tensor)")
        return {str(k): v.detach().cpu().numpy() for k, v in state.items()}
    raise ConfigError(f"--init-model: {path}: expected a .npz or a torch .pt state_dict file")


def check_deployable(config: RunConfig) -> None:
    """`ConfigError` (one line) when ``config`` sets a simulation-only option, or its
    task (or ``init_model``) cannot be built: before the deployment starts a run.

    A server `RunConfig` has no simulation-only fields (`RunConfig.from_dict` refuses them
    by name); a simulation's config handed to a deployment is refused here the same way.
    """
    for name, default in SIMULATION_ONLY.items():
        value = getattr(config, name, default)
        if name == "partition" and config.task in DATASETS:
            continue  # a bundled task's split is its task option, which a deployment reads
        if value != default:
            raise ConfigError(f"--config: {name} = {value!r} is a simulation option (fedsilo "
                              "simulate); a deployment's run config must not set it")
    server_task(config)

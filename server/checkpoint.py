"""Atomic per-round checkpoints: model, optimiser state, RNG state, lineage head.

Each checkpoint is written to a temporary file in the run directory, fsynced and
renamed over ``checkpoint.npz``, so a crash at any point leaves either the previous
complete checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedsilo.server.config import RunConfig

CHECKPOINT_NAME = "checkpoint.npz"
MODEL_NAME = "model.npz"


@dataclass
class Checkpoint:
    """The server state after a completed round.

    Parameters
    ----------
    round : the last completed round.
    model : flat float32 global model.
    optimizer_state : the server optimiser's state (arrays and scalars).
    rng_state : the sampling generator's bit-generator state.
    lineage_head : digest of the last lineage record written.
    extra : other JSON-able state (accountant state...).
    """

    round: int
    model: np.ndarray
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    rng_state: dict[str, Any] = field(default_factory=dict)
    lineage_head: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def write_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Atomically replace ``run_dir/checkpoint.npz`` with ``ckpt``."""
    arrays = {"model": np.asarray(ckpt.model)}
    scalars: dict[str, Any] = {}
    for key, value in ckpt.optimizer_state.items():
        if isinstance(value, np.ndarray):
            arrays[f"opt.{key}"] = value
        else:
            scalars[key] = value
    meta = {
        "round": ckpt.round,
        "optimizer_scalars": scalars,
        "rng_state": ckpt.rng_state,
        "lineage_head": ckpt.lineage_head,
        "extra": ckpt.extra,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=int).encode(), dtype=np.uint8)
    return _write_npz_atomically(run_dir, CHECKPOINT_NAME, arrays)


def write_model(run_dir: Path, weights: dict[str, np.ndarray]) -> Path:
    """Atomically replace ``run_dir/model.npz`` with the named layers ``weights``.

    The server writes it before the closing record, so a closed chain of a finished run
    always has its model on disk (a crash leaves the previous state or the new file).
    """
    return _write_npz_atomically(run_dir, MODEL_NAME, weights)


def _write_npz_atomically(run_dir: Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to a temporary file, fsync it, rename it to ``name``, fsync the dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(name).stem}-", suffix=".npz", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        target = run_dir / name
        os.replace(tmp, target)
        _fsync_dir(run_dir)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_checkpoint(run_dir: Path) -> Checkpoint:
    """Load ``run_dir/checkpoint.npz``."""
    with np.load(run_dir / CHECKPOINT_NAME, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        opt: dict[str, Any] = dict(meta["optimizer_scalars"])
        opt.update({k[4:]: data[k] for k in data.files if k.startswith("opt.")})
        return Checkpoint(
            round=int(meta["round"]),
            model=data["model"].copy(),
            optimizer_state=opt,
            rng_state=meta["rng_state"],
            lineage_head=meta["lineage_head"],
            extra=meta.get("extra", {}),
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resumable_config(run_dir: Path, config_type: type[RunConfig] | None = None) -> RunConfig:
    """The saved config of the crashed run in ``run_dir``; `ConfigError` if it cannot resume.

    ``config_type``: the config class to read it as (default `RunConfig`; a simulation
    passes `fedsilo.simulations.config.SimulationConfig`, whose attack fields it holds).

    A run can resume when its directory has the resolved ``config.toml``, a checkpoint
    (round 1 finished) and no ``report.html`` (written last: the run did not finish, or
    its outputs are incomplete and the resume completes them).
    """
    from fedsilo.server.config import ConfigError, RunConfig

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--resume: {run_dir} has no config.toml; not a fedsilo run directory")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"--resume: {run_dir} has no checkpoint (did round 1 finish?)")
    if (run_dir / "report.html").exists():
        raise ConfigError(f"--resume: {run_dir} holds a finished run (its report.html is "
                          "written); nothing to resume")
    return (config_type or RunConfig).load(run_dir / "config.toml")

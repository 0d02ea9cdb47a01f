"""Run-directory conventions shared by the lineage commands.

``RUN_DIR/lineage.sqlite`` (the chain), ``RUN_DIR/model.npz`` (final model),
``RUN_DIR/sites/<site_id>/ledger.jsonl`` and ``key.pem`` (simulated sites),
``RUN_DIR/keys/server.pem`` (simulated server key; never read by verification).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import LineageError

DB_NAME = "lineage.sqlite"
MODEL_NAME = "model.npz"


@dataclass(frozen=True)
class RunPaths:
    """Where a run's lineage files are.

    Attributes:
        run_dir: the run directory.
        db_path: the chain store.
        model_path: the saved final model (may not exist).
    """

    run_dir: Path
    db_path: Path
    model_path: Path

    def site_ledger(self, site_id: str) -> Path:
        """``RUN_DIR/sites/<site_id>/ledger.jsonl``."""
        return self.run_dir / "sites" / site_id / "ledger.jsonl"


def locate_run(path: Path) -> RunPaths:
    """Resolve a run directory (or a ``lineage.sqlite`` file given directly).

    Args:
        path: the run directory, or the chain store file itself (its directory is then the
            run directory).

    Raises:
        LineageError: if the path does not exist or the directory has no ``lineage.sqlite``.
    """
    path = Path(path)
    if not path.exists():
        raise LineageError(f"{path}: no such file or directory")
    if path.is_dir():
        db_path = path / DB_NAME
        if not db_path.is_file():
            raise LineageError(f"{path}: no {DB_NAME} here (not a fedsilo run directory?)")
        return RunPaths(path, db_path, path / MODEL_NAME)
    return RunPaths(path.parent, path, path.parent / MODEL_NAME)

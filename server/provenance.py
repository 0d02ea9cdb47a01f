"""Code version recorded in the lineage genesis record."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path


def code_version() -> dict[str, str]:
    """fedsilo and flwr versions, Python version and the git commit when known."""
    out = {
        "fedsilo": _version("fedsilo"),
        "flwr": _version("flwr"),
        "python": platform.python_version(),
    }
    commit = _git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        res = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None

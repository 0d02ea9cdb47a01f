"""The baseline of the drift check: the data profiles an earlier run recorded in its genesis.

Contract: `load_baseline` reads ``RUN_DIR`` (``--baseline``, ``[monitor] baseline``) once,
at the boundary, before the new run writes anything: the run's lineage chain must verify
(`fedsilo.lineage.verify_run`), be of the same task (name and data schema digest) and hold
data profiles; otherwise a one-line `BaselineError` names the option, the directory and
what was expected. What it returns is trusted inside: site id -> profile, the federation's
profile, the baseline's run id and chain head (recorded in the new run's genesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.common.errors import FedsiloError
from fedsilo.lineage import LineageError, load_chain, verify_run


class BaselineError(FedsiloError, ValueError):
    """A ``--baseline`` run that cannot serve (one line: the directory and why)."""


def profile_arrays(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A profile from its lineage form (name -> nested lists of counts)."""
    return {str(k): np.asarray(v, dtype=np.float64) for k, v in raw.items()}


def profile_lists(profile: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A profile's lineage form: counts as nested lists (integers where they are whole)."""
    out: dict[str, Any] = {}
    for name, arr in sorted(profile.items()):
        arr = np.asarray(arr, dtype=np.float64)
        whole = np.all(arr == np.round(arr))
        out[name] = (arr.astype(np.int64) if whole else np.round(arr, 6)).tolist()
    return out


def profiles_lists(profiles: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """`profile_lists` of many profiles of one layout (site -> profile), array by array."""
    sites = sorted(profiles)
    if not sites:
        return {}
    columns = {name: profile_lists({name: np.stack([profiles[s][name] for s in sites])})[name]
               for name in profiles[sites[0]]}
    return {site: {name: columns[name][i] for name in sorted(columns)}
            for i, site in enumerate(sites)}


def load_baseline(run_dir: str | Path, identity: Mapping[str, str] | None) -> dict[str, Any]:
    """The baseline run's profiles (see the module docstring); ``identity``: the new run's
    task identity (name, version, layout and schema digests)."""
    where = f"--baseline: {run_dir}"
    path = Path(run_dir)
    if not (path / "lineage.sqlite").is_file():
        raise BaselineError(f"{where}: not a run directory (no lineage.sqlite); expected the "
                            "directory of an earlier run of this task")
    try:
        report = verify_run(path)
        if not report.ok:
            raise BaselineError(f"{where}: its lineage chain does not verify "
                                f"({report.first_failure}); a baseline must verify")
        chain = load_chain(path)
    except LineageError as exc:
        raise BaselineError(f"{where}: {exc}") from None
    task = chain.genesis.get("task") or {}
    if identity is not None:
        for key in ("name", "schema_digest"):
            if task.get(key) != identity.get(key):
                raise BaselineError(f"{where}: a run of another task ({key} "
                                    f"{task.get(key)!r}, this run's is {identity.get(key)!r}); "
                                    "expected a run of the same task and data schema")
    profiles = task.get("data_profiles")
    if not profiles:
        raise BaselineError(f"{where}: its genesis holds no data profiles (a run without "
                            "the drift check); expected a run with [monitor] drift on")
    return {"run_id": str(chain.genesis["run_id"]),
            "chain_head": str(chain.envelopes[-1]["digest"]),
            "sites": {str(s): profile_arrays(p) for s, p in (profiles.get("sites") or {}).items()},
            "federation": profile_arrays(profiles["federation"])}

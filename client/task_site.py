"""A `Site` driven by a Task: its Trainer, task identity and statistics come from the task.

The Trainer announced at the handshake is built without statistics (its data fingerprint
and example count must not depend on them); once the server sends the federation's
summed statistics, the site rebuilds its Trainer with them (`Site.apply_statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsilo.client.app import Site
from fedsilo.client.policy import SitePolicy
from fedsilo.tasks import SiteData, Task


def task_site(task: Task, data: SiteData, *, key: Any = None, ledger: Any = None,
              policy: SitePolicy | None = None) -> Site:
    """The site ``data.site_id`` holding ``data``, for ``task``."""

    def statistics() -> dict[str, np.ndarray] | None:
        return task.site_statistics(data)

    def with_statistics(stats: Mapping[str, np.ndarray]) -> Any:
        return task.build_trainer(data, stats)

    return Site(site_id=data.site_id, trainer=task.build_trainer(data, None), key=key,
                ledger=ledger, policy=policy or SitePolicy(),
                task_identity=task.identity().to_dict(), statistics_fn=statistics,
                trainer_factory=with_statistics, profile_fn=lambda: task.data_profile(data))

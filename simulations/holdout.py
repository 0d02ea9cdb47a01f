"""Each simulated site's own held-out split, carved from the central test split.

`held_out_split` lives in `fedsilo.tasks.partition` (demo sites in deployments use it
too); re-exported here for simulations and older imports.
"""

from __future__ import annotations

from fedsilo.tasks.partition import _largest_remainder, held_out_split

__all__ = ["_largest_remainder", "held_out_split"]

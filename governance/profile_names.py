"""The arrays of a data profile: what a site computes (`fedsilo.tasks.profile`) and the
drift check reads (`fedsilo.governance.drift`).

Apart from the check so that a site, which needs only the names, does not import SciPy
(0.4 s of CPU in every ClientApp process of the deployment runtime).
"""

PREFIX = "profile."
"""Names of profile arrays start with it (they can ride along a task's own statistics)."""
ROWS, FEATURES, LABELS = f"{PREFIX}rows", f"{PREFIX}features", f"{PREFIX}labels"
"""The arrays of a data profile (`fedsilo.tasks.profile` computes them at a site)."""
NOISE = f"{PREFIX}noise"
"""A profile released under DP (client level: the federation's noisy sum; record level: a
site's own noisy counts) carries the variance of every count's Gaussian noise, shape (1,)
(`fedsilo.privacy.profile_release`); absent: no noise."""

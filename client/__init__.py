"""fedsilo.client: the site SDK.

A data-holding site implements `Trainer` (fit and evaluate on its own data, and a
data fingerprint) and turns it into a Flower ClientApp with `make_client_app`. The
site's `SitePolicy` is enforced on every round, and what it sends is signed and kept
in its own ledger (see `fedsilo.lineage`).
"""

from fedsilo.client.app import Site, SiteFactory, make_client_app
from fedsilo.client.policy import SitePolicy
from fedsilo.client.trainer import EvalResult, FitResult, Trainer, Weights

__all__ = [
    "EvalResult",
    "FitResult",
    "Site",
    "SiteFactory",
    "SitePolicy",
    "Trainer",
    "Weights",
    "make_client_app",
]

"""fedsilo.privacy.secagg: SecAgg+ secure aggregation (Bell et al. 2020).

Flower-independent: numpy + `cryptography`. `SecAggServer` and `SecAggClient` are the
two state machines; `fedsilo.server.secagg_round` (the server's session and its driver)
and `fedsilo.client.secagg_handler` carry their messages over Flower's Message API.
"""

from . import crypto, shamir
from .client import SecAggClient
from .config import SecAggConfig
from .errors import SecAggAbort, SecAggClientError, SecAggError
from .messages import (
    STAGES,
    KeyAdvert,
    MaskedReply,
    MaskedRequest,
    SetupRequest,
    ShareReply,
    ShareRequest,
    SiteError,
    UnmaskReply,
    UnmaskRequest,
)
from .planning import failure_bound, suggest_degree
from .quantize import check_no_overflow, error_bound
from .server import AggregateResult, SecAggServer

__all__ = [
    "STAGES", "AggregateResult", "KeyAdvert", "MaskedReply", "MaskedRequest",
    "SecAggAbort", "SecAggClient", "SecAggClientError", "SecAggConfig", "SecAggError",
    "SecAggServer", "SetupRequest", "ShareReply", "ShareRequest", "SiteError", "UnmaskReply",
    "UnmaskRequest", "check_no_overflow", "crypto", "error_bound", "failure_bound",
    "shamir", "suggest_degree",
]

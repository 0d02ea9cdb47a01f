"""Errors raised by the SecAgg+ protocol."""

from fedsilo.common.errors import FedsiloError


class SecAggError(FedsiloError):
    """Base class for SecAgg+ failures."""


class SecAggAbort(SecAggError):
    """The server cannot finish the round safely (e.g. fewer than `threshold` sites remain).

    The message is the reason recorded in lineage; no sum is output.
    """


class SecAggClientError(SecAggError):
    """A site refuses a server request (inconsistent keys, graph, survivor sets, ...)."""

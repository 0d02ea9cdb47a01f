"""Errors raised by :mod:`fedsilo.lineage`."""

from __future__ import annotations

from fedsilo.common.errors import FedsiloError


class LineageError(FedsiloError):
    """Bad lineage input (missing, foreign, truncated or corrupted file, wrong schema).

    The message is one line meant for a user: it names the file or field and what was
    expected. The CLI prints it as ``fedsilo lineage: error: <message>`` and exits 2.
    """

"""The root of fedsilo's typed errors.

Every error fedsilo raises on purpose, with a one-line message meant for a user (a bad
config, a refused site, a corrupted lineage file...), derives from :class:`FedsiloError`,
so a caller can tell "fedsilo said no" from a bug with one ``except FedsiloError``.

A typed error that was a ``ValueError`` (or ``RuntimeError``) keeps that base too, so code
that caught the builtin goes on catching it::

    class ConfigError(FedsiloError, ValueError): ...
"""

from __future__ import annotations

import os
import sys


class FedsiloError(Exception):
    """Base class of fedsilo's typed errors (see the module docstring)."""


def reader_left() -> int:
    """Exit code 0 after a `BrokenPipeError` on stdout (``fedsilo ... | head``: the reader
    left, not an error of ours), with stdout pointed at /dev/null so that the
    interpreter's flush at exit raises nothing either."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


__all__ = ["FedsiloError", "reader_left"]

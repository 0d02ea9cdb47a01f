"""The root of fedsilo's typed errors.

Every error fedsilo raises on purpose, with a one-line message meant for a user (a bad
config, a refused site, a corrupted lineage file...), derives from :class:`FedsiloError`,
so a caller can tell "fedsilo said no" from a bug with one ``except FedsiloError``.

A typed error that was a ``ValueError`` (or ``RuntimeError``) keeps that base too, so code
that caught the builtin goes on catching it::

    class ConfigError(FedsiloError, ValueError): ...
"""

from __future__ import annotations


class FedsiloError(Exception):
    """Base class of fedsilo's typed errors (see the module docstring)."""


__all__ = ["FedsiloError"]

"""What became of a site's update, as lineage records it.

Two vocabularies meet here:

* :class:`Fate`, a contribution's ``fate`` in a round record: ``accepted`` (the update fed
  the aggregate) or ``rejected`` (screened out, or left out by the aggregator);
* the aggregator's own label of a row (`fedsilo.strategies.base.AggregateResult.fates`):
  ``accepted``, ``clipped``, ``trimmed``, ``downweighted`` (all of which fed the aggregate)
  or ``rejected:<by whom>`` (which did not). :meth:`Fate.of_aggregation` maps the second to
  the first; the label itself is kept in the contribution's ``detail.aggregation``.

:class:`SecAggFate` is a SecAgg+ contribution's ``detail.secagg.fate``.

Both are ``StrEnum``: a member *is* its string (``Fate.ACCEPTED == "accepted"``), so stored
chains, which hold the plain strings, read and compare unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Fate(StrEnum):
    """A contribution's fate in a round record."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"

    @classmethod
    def of_aggregation(cls, label: str) -> Fate:
        """The lineage fate of an aggregator's row label: ``"rejected"`` and
        ``"rejected:<by whom>"`` are :attr:`REJECTED`; every other label (``accepted``,
        ``clipped``, ``trimmed``, ``downweighted``) fed the aggregate, so :attr:`ACCEPTED`.
        """
        if label == cls.REJECTED or label.startswith(REJECTED_PREFIX):
            return cls.REJECTED
        return cls.ACCEPTED


#: Prefix of an aggregator's rejection label, followed by who rejected (``rejected:krum``).
REJECTED_PREFIX = "rejected:"


class SecAggFate(StrEnum):
    """A SecAgg+ site's fate in the secure sum (``detail.secagg.fate``)."""

    IN_SUM = "in_sum"
    RECOVERED = "recovered"
    DROPPED = "dropped"
    ABORTED = "aborted"

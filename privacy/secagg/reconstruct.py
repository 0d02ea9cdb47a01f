"""Recovering a SecAgg+ secret (a mask seed or a mask key) from its Shamir shares.

The server's last stage (`fedsilo.privacy.secagg.server.SecAggServer.on_unmask`) holds,
per owner, the shares its neighbours returned. Every owner's first ``t`` shares are
interpolated in one batch; an owner whose result does not verify (a commitment, or a
public key) is searched for a consistent subset of its shares, and the holders of shares
off that polynomial are named as forgers. A secret that cannot be recovered aborts the
round: no sum is output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, MutableMapping, Sequence

import numpy as np

from . import shamir
from .errors import SecAggAbort

MAX_RECONSTRUCTION_TRIES = 256
"""Subsets of ``t`` shares tried per owner before the round aborts."""


def reconstruct_all(x: Mapping[int, int], t: int, reasons: MutableMapping[int, str],
                    what: str, owners: Sequence[int], pts: Mapping[int, list[tuple[int, int]]],
                    verify: Callable[[int, bytes], bool]) -> dict[int, bytes]:
    """Recover and verify each owner's secret; batched, with a per-owner fallback.

    Parameters
    ----------
    x : node id -> its Shamir evaluation point.
    t : the threshold (shares needed).
    reasons : node id -> exclusion reason; forgers found here are added.
    what : what the secret is, for messages (``"mask seed"``, ``"mask key"``).
    owners : whose secrets to recover.
    pts : owner -> its shares as (holder, field element), sorted by holder.
    verify : (owner, secret) -> whether the secret is the owner's.
    """
    for o in owners:
        if len(pts[o]) < t:
            raise SecAggAbort(f"secagg unmask: {what} of node {o}: {len(pts[o])} shares, "
                              f"need {t}")
    rows = [pts[o][:t] for o in owners]  # the first t holders (lists sorted by holder)
    xs = np.array([[x[j] for j, _ in row] for row in rows], dtype=np.int64)
    got = shamir.combine_batch(xs.reshape(len(rows), t), [[y for _, y in row] for row in rows])
    out = {}
    for o, secret in zip(owners, got, strict=True):
        if secret is not None and verify(o, secret):
            out[o] = secret
        else:
            out[o] = reconstruct_one(x, t, reasons, o, what, pts[o],
                                     lambda s, o=o: verify(o, s))
    return out


def reconstruct_one(x: Mapping[int, int], t: int, reasons: MutableMapping[int, str],
                    owner: int, what: str, pts: list[tuple[int, int]],
                    verify: Callable[[bytes], bool]) -> bytes:
    """Recover a secret from >= t shares and verify it; find and record forged shares."""
    if len(pts) < t:
        raise SecAggAbort(f"secagg unmask: {what} of node {owner}: {len(pts)} shares, "
                          f"need {t}")
    pts = sorted(pts)
    for n_try, subset in enumerate(itertools.combinations(pts, t)):
        if n_try >= MAX_RECONSTRUCTION_TRIES:
            break
        poly = [(x[j], y) for j, y in subset]
        value = shamir.interpolate(poly)
        if value >> (8 * shamir.SECRET_BYTES):
            continue  # inconsistent shares (not a 32-byte secret)
        secret = value.to_bytes(shamir.SECRET_BYTES, "big")
        if not verify(secret):
            continue
        if n_try:  # some share is forged: name the holders off the polynomial
            for j, y in pts:
                if y != shamir.interpolate(poly, x[j]):
                    reasons[j] = f"unmask: forged share of node {owner}'s {what}"
        return secret
    raise SecAggAbort(f"secagg unmask: {what} of node {owner} could not be reconstructed "
                      "from consistent shares (forged shares?); no sum is output")

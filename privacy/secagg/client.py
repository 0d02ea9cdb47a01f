"""Site-side SecAgg+ state machine.

One `SecAggClient` per site and round. Its state is JSON-serialisable (`dump` /
`load`) so a Flower ClientApp can keep it in ``context.state`` between messages.
Every request is checked; an inconsistent one raises `SecAggClientError` and the
site refuses the round (the server then treats it as dropped).
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import os
from typing import Any

import numpy as np

from . import crypto, shamir
from .config import SecAggConfig
from .errors import SecAggClientError
from .graph import neighbours
from .messages import (
    KeyAdvert,
    MaskedReply,
    MaskedRequest,
    SetupRequest,
    ShareReply,
    ShareRequest,
    UnmaskReply,
    UnmaskRequest,
)
from .quantize import check_no_overflow, quantize

_ONE = np.ones(1, dtype=np.float32)  # weight coordinate input: 1 * (w / W * c), exact
_BYTES_FIELDS = ("c_sk", "s_sk", "c_pk", "s_pk", "seed")
# owner -> value tables of the state: name -> (bytes per value, values per owner)
_TABLES = {"chan": (crypto.KEY_BYTES, 1), "mseed": (crypto.KEY_BYTES, 1),
           "held": (shamir.SHARE_BYTES, 2)}

# Parsed private keys of each node's current round, from its setup to its share stage.
# Parsing a raw X25519 private key recomputes its public key (~30 us, twice per site and
# round); the raw keys stay in the state, which remains the source of truth: an entry is
# used only if it matches the state's run, round and public keys (else the keys are parsed),
# and is removed at the share stage or replaced by the node's next setup (at most one per
# node in this process). Whoever drops a node's state calls `forget_keys` as well.
_PARSED: dict[int, tuple[str, int, bytes, bytes, crypto.X25519PrivateKey,
                         crypto.X25519PrivateKey]] = {}


def forget_keys(node_id: int) -> None:
    """Drop the parsed private keys kept for ``node_id`` (when its round state is dropped)."""
    _PARSED.pop(node_id, None)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def holder_points(participants: list[int], holders: list[int]) -> list[int]:
    """`share_points` of ``holders`` only (a site needs k + 1 points, not all n)."""
    ranked = sorted(participants)
    return [bisect.bisect_left(ranked, h) + 1 for h in holders]


def share_points(participants: list[int]) -> dict[int, int]:
    """Shamir evaluation point of each holder: its rank among the round's participants + 1.

    Points only need to be distinct and non-zero; small ones (<= n rather than 64-bit
    node ids) let the server compute Lagrange coefficients in numpy
    (`shamir.combine_batch`). Both sides derive them from the same participant list U1.
    """
    return {int(n): i + 1 for i, n in enumerate(sorted(participants))}


class SecAggClient:
    """One site's view of one SecAgg+ round.

    Parameters
    ----------
    node_id:
        This site's node id (unsigned 64-bit).
    """

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.st: dict[str, Any] = {"stage": "new"}
        self._config: SecAggConfig | None = None  # parsed ``st["config"]`` (fixed at setup)

    @property
    def config(self) -> SecAggConfig:
        """The round's parameters, parsed from the state once per object."""
        if self._config is None:
            self._config = SecAggConfig.from_dict(self.st["config"])
        return self._config

    # ---------------------------------------------------------------- state
    def dump(self) -> bytes:
        """Serialise the state: JSON, bytes as base64.

        The per-neighbour tables (``chan``, ``mseed``: 32-byte keys; ``held``: pairs of
        shares) are stored as their owner list plus one base64 string of the values
        joined. In memory they stay raw bytes, so the protocol steps never encode or
        decode them; only this dump (after every stage) does, once per table.
        """
        out: dict[str, Any] = {}
        for k, v in self.st.items():
            if isinstance(v, bytes):
                out[k] = _b64(v)
            elif k in _TABLES:
                cells = v.values() if _TABLES[k][1] == 1 else itertools.chain.from_iterable(v.values())
                out[k] = [list(v), _b64(b"".join(cells))]
            else:
                out[k] = v
        return json.dumps({"node_id": self.node_id, "st": out}).encode()

    @classmethod
    def load(cls, blob: bytes) -> SecAggClient:
        """Inverse of `dump`; raises ValueError if the blob is not a state it wrote."""
        raw = json.loads(blob)
        c = cls(int(raw["node_id"]))
        st = raw["st"]
        for k in _BYTES_FIELDS:
            if k in st:
                st[k] = base64.b64decode(st[k])
        for k, (width, per_owner) in _TABLES.items():
            if k not in st:
                continue
            owners, packed = st[k]
            data = base64.b64decode(packed)
            if len(data) != len(owners) * width * per_owner:
                raise ValueError(f"secagg state: table {k!r} has {len(data)} bytes for "
                                 f"{len(owners)} owners")
            cells = [data[i:i + width] for i in range(0, len(data), width)]
            st[k] = {o: (cells[i] if per_owner == 1
                         else cells[i * per_owner:(i + 1) * per_owner])
                     for i, o in enumerate(owners)}
        c.st = st
        return c

    def _expect(self, stage: str) -> None:
        if self.st["stage"] != stage:
            raise SecAggClientError(
                f"secagg: node {self.node_id} got a request out of order (state "
                f"{self.st['stage']!r}, expected {stage!r})"
            )

    # ---------------------------------------------------------------- stage 1
    def setup(self, req: SetupRequest) -> KeyAdvert:
        """Generate fresh key pairs for this round and advertise the public keys."""
        self._expect("new")
        req.config.validate()
        if req.vector_length < 1 or req.num_sampled < 2:
            raise SecAggClientError(f"secagg: node {self.node_id}: bad round parameters "
                                    f"(vector_length={req.vector_length}, "
                                    f"num_sampled={req.num_sampled})")
        c_key, s_key = crypto.X25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
        c_sk, c_pk = c_key.private_bytes_raw(), c_key.public_key().public_bytes_raw()
        s_sk, s_pk = s_key.private_bytes_raw(), s_key.public_key().public_bytes_raw()
        _PARSED[self.node_id] = (req.run_id, req.server_round, c_pk, s_pk, c_key, s_key)
        self._config = req.config
        self.st.update(
            stage="setup", run_id=req.run_id, round=req.server_round,
            config=req.config.to_dict(), d=req.vector_length, n_sampled=req.num_sampled,
            c_sk=c_sk, c_pk=c_pk, s_sk=s_sk, s_pk=s_pk, held={},
        )
        return KeyAdvert(c_pk=c_pk, s_pk=s_pk)

    def _private_keys(self, hit: tuple | None) -> tuple[crypto.X25519PrivateKey,
                                                         crypto.X25519PrivateKey]:
        """This round's (channel, mask) private keys: ``hit`` (the parsed pair kept since
        setup) if it belongs to this state, else parsed from the state's raw keys."""
        st = self.st
        if hit is not None and hit[:4] == (st["run_id"], st["round"], st["c_pk"], st["s_pk"]):
            return hit[4], hit[5]
        return crypto.private_key(st["c_sk"]), crypto.private_key(st["s_sk"])

    # ---------------------------------------------------------------- stage 2
    def share(self, req: ShareRequest) -> ShareReply:
        """Check the graph and keys, then Shamir-share the mask seed and mask key."""
        self._expect("setup")
        me = self.node_id
        # taken out whatever happens next: after this stage no private key is kept
        parsed = _PARSED.pop(me, None)
        cfg = self.config
        if req.own_c_pk != self.st["c_pk"] or req.own_s_pk != self.st["s_pk"]:
            raise SecAggClientError(f"secagg: node {me}: server echoed keys it did not advertise")
        parts = list(req.participants)  # Python ints (`ids_from_bytes` / the driver)
        if len(set(parts)) != len(parts) or me not in parts or len(parts) > self.st["n_sampled"]:
            raise SecAggClientError(f"secagg: node {me}: participant list has duplicates, "
                                    "omits this node or exceeds the sampled count")
        try:
            check_no_overflow(len(parts), cfg.bits)
            k, t = cfg.resolve_round(self.st["n_sampled"], len(parts))
        except ValueError as e:
            raise SecAggClientError(f"secagg: node {me}: {e}") from None
        nbrs = neighbours(parts, k, self.st["run_id"], self.st["round"], me)
        if sorted(int(n) for n in req.neighbours) != nbrs:
            raise SecAggClientError(f"secagg: node {me}: neighbour list does not match the "
                                    f"{k}-regular graph over the {len(parts)} participants")
        keys = [*req.c_pks, *req.s_pks]
        distinct = set(keys) | {self.st["c_pk"], self.st["s_pk"]}
        if len(keys) != 2 * len(nbrs) or any(len(x) != 32 for x in keys) \
                or len(distinct) != len(keys) + 2:
            raise SecAggClientError(f"secagg: node {me}: neighbour public keys malformed or reused")
        seed = os.urandom(shamir.SECRET_BYTES)
        holders = sorted([*nbrs, me])
        xs = holder_points(parts, holders)
        seed_shares, key_shares = shamir.split_many([seed, self.st["s_sk"]], xs, t)
        b_sh = dict(zip(holders, seed_shares, strict=True))
        s_sh = dict(zip(holders, key_shares, strict=True))
        run, rnd = self.st["run_id"], self.st["round"]
        c_sk, s_sk = self._private_keys(parsed)
        chan, mseed = {}, {}
        for j, c_pk, s_pk in zip(req.neighbours, req.c_pks, req.s_pks, strict=True):
            j = int(j)
            try:
                chan[str(j)] = crypto.agree(c_sk, c_pk, purpose=b"channel", run_id=run,
                                            server_round=rnd, node_a=me, node_b=j)
                mseed[str(j)] = crypto.agree(s_sk, s_pk, purpose=b"mask", run_id=run,
                                             server_round=rnd, node_a=me, node_b=j)
            except ValueError:
                raise SecAggClientError(f"secagg: node {me}: invalid public key of node {j}") \
                    from None
        receivers = [int(j) for j in req.neighbours]
        cts = crypto.encrypt_many([chan[str(j)] for j in receivers],
                                  [b_sh[j] + s_sh[j] for j in receivers],
                                  [crypto.share_aad(run, rnd, me, j) for j in receivers])
        self.st.update(stage="share", seed=seed, k=k, t=t, chan=chan, mseed=mseed)
        # the private keys have done their work (agreements made, mask key shared): keep
        # no more secrets between messages than the next stage needs
        for key in ("c_sk", "s_sk"):
            del self.st[key]
        self.st["held"][str(me)] = [b_sh[me], s_sh[me]]
        return ShareReply(receivers=receivers, ciphertexts=cts,
                          commitment=crypto.commit(seed, run, rnd, me))

    # ---------------------------------------------------------------- stage 3
    def masked_input(self, req: MaskedRequest, delta: np.ndarray, weight: float) -> MaskedReply:
        """Decrypt the shares received, then quantise and mask ``weight * delta``.

        Parameters
        ----------
        req:
            The encrypted shares from neighbours that completed stage 2.
        delta:
            This site's flat update (length d).
        weight:
            Aggregation weight in [0, config.max_weight] (e.g. example count).
        """
        self._expect("share")
        me = self.node_id
        cfg = self.config
        d = self.st["d"]
        delta = np.asarray(delta)
        if delta.shape != (d,) or not np.issubdtype(delta.dtype, np.floating):
            raise SecAggClientError(f"secagg: node {me}: update must be a flat float vector of "
                                    f"length {d}, got {delta.dtype} {delta.shape}")
        if not 0.0 <= weight <= cfg.max_weight:
            raise SecAggClientError(f"secagg: node {me}: weight {weight} outside "
                                    f"[0, max_weight={cfg.max_weight}]")
        frac = weight / cfg.max_weight
        y = np.empty(d + 2, dtype=np.uint32)
        gen = crypto.MaskGenerator(d + 2)
        # rounding noise: a keystream under a fresh random key (consumed here, before any
        # mask reuses the generator's buffer); the quantisation also checks finiteness
        noise = gen.random_words()
        try:
            _, clipped = quantize(delta, cfg.clip_range, cfg.bits, noise[:d], out=y[:d],
                                  factor=frac)
        except ValueError:
            raise SecAggClientError(f"secagg: node {me}: update has non-finite values") \
                from None
        # weight coordinate: frac * c, in [0, c]
        quantize(_ONE, cfg.clip_range, cfg.bits, noise[d:d + 1], out=y[d:d + 1],
                 factor=frac * cfg.clip_range)
        y[d + 1] = 1  # check coordinate: must sum to the number of survivors
        senders = [int(s) for s in req.senders]
        chan = self.st["chan"]
        if len(set(senders)) != len(senders) or any(str(s) not in chan for s in senders) \
                or len(req.ciphertexts) != len(senders):
            raise SecAggClientError(f"secagg: node {me}: shares from non-neighbours or duplicated")
        if len(senders) + 1 < self.st["t"]:
            raise SecAggClientError(f"secagg: node {me}: only {len(senders)} neighbours shared "
                                    f"keys, threshold {self.st['t']} unreachable")
        run, rnd = self.st["run_id"], self.st["round"]
        for s, ct in zip(senders, req.ciphertexts, strict=True):
            try:
                pt = crypto.decrypt(chan[str(s)], ct,
                                    crypto.share_aad(run, rnd, s, me))
            except ValueError:
                raise SecAggClientError(f"secagg: node {me}: share from node {s} failed "
                                        "authentication (forged or altered)") from None
            if len(pt) != 2 * shamir.SHARE_BYTES:
                raise SecAggClientError(f"secagg: node {me}: share from node {s} malformed")
            self.st["held"][str(s)] = [pt[: shamir.SHARE_BYTES], pt[shamir.SHARE_BYTES:]]
        # self mask, then a pairwise mask per neighbour that shared: + towards larger node
        # ids, - towards smaller ones, so each pair's masks cancel in the sum
        mseed = self.st["mseed"]
        gen.add_masks(y, [self.st["seed"], *(mseed[str(s)] for s in senders)],
                      [False, *(me > s for s in senders)])
        self.st.update(stage="masked", clipped=clipped)
        for key in ("chan", "mseed", "seed"):  # used up: only the held shares remain
            del self.st[key]
        return MaskedReply(masked=y)

    # ---------------------------------------------------------------- stage 4
    def unmask(self, req: UnmaskRequest) -> UnmaskReply:
        """Reveal, per neighbour, the seed share (if it survived) or key share (if it dropped).

        Never reveals both kinds for one owner: one unmask per round, disjoint sets.
        """
        self._expect("masked")
        me = self.node_id
        surv = {int(x) for x in req.survivors}
        drop = {int(x) for x in req.dropped}
        if surv & drop or len(surv) != len(req.survivors) or len(drop) != len(req.dropped):
            raise SecAggClientError(f"secagg: node {me}: survivor and dropped lists overlap or "
                                    "repeat")
        if me not in surv:
            raise SecAggClientError(f"secagg: node {me}: not listed as a survivor")
        held = [int(o) for o in self.st["held"]]
        unknown = [o for o in held if o not in surv and o not in drop]
        if unknown:
            raise SecAggClientError(f"secagg: node {me}: server did not classify nodes {unknown}")
        if len([o for o in held if o in surv]) < self.st["t"]:
            raise SecAggClientError(f"secagg: node {me}: fewer than t={self.st['t']} of its "
                                    "neighbourhood survived; refusing to unmask")
        b_owners = sorted(o for o in held if o in surv)
        sk_owners = sorted(o for o in held if o in drop)
        reply = UnmaskReply(
            b_owners=b_owners, b_shares=[self.st["held"][str(o)][0] for o in b_owners],
            sk_owners=sk_owners, sk_shares=[self.st["held"][str(o)][1] for o in sk_owners],
        )
        # the round is over for this site: keep only what refuses a replayed request
        self.st = {"stage": "done", "run_id": self.st["run_id"], "round": self.st["round"],
                   "held": {}}
        return reply

"""Synthetic runs for tests, benchmarks and docs: a real, signed chain without Flower.

:func:`build_synthetic_run` writes a complete run directory following the run-directory
conventions (see :mod:`fedsilo.lineage.runs`): real Ed25519 keys for the server and every
site, real update vectors and model arrays, site signatures, site ledgers, ``model.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .digests import arrays_digest, update_digest
from .fates import Fate
from .fingerprint import data_fingerprint
from .keys import load_or_create_key, public_key_hex
from .ledger import SiteLedger
from .records import (
    ClosingRecord,
    GenesisRecord,
    ResumeRecord,
    RoundRecord,
    SiteContribution,
    SiteEvaluation,
    SiteIdentity,
    SiteJoinRecord,
)
from .runs import DB_NAME, MODEL_NAME
from .signing import (
    GENESIS_ATTESTATION,
    attestation_digest,
    contribution_message,
    sign_declaration,
    sign_evaluation,
)
from .store import LineageWriter


@dataclass
class SyntheticRun:
    """What :func:`build_synthetic_run` wrote.

    Attributes:
        run_dir: the run directory.
        run_id: the run id.
        site_ids: all site ids (genesis sites first, then the late joiner if any).
        model_digests: initial model digest, then each round's model_out.
        digests: record digests in chain order.
    """

    run_dir: Path
    run_id: str
    site_ids: list[str]
    model_digests: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)


def build_synthetic_run(
    run_dir: Path,
    *,
    rounds: int = 3,
    sites: int = 4,
    dim: int = 8,
    seed: int = 0,
    late_joiner: bool = False,
    resume_after: int | None = None,
    reject_every: int = 0,
    refuse: tuple[int, int] | None = None,
    close: bool = True,
    ledgers: bool = True,
    durable: bool = True,
    evaluations: bool = False,
    chained: bool = True,
) -> SyntheticRun:
    """Write a synthetic, fully signed run into ``run_dir`` (created if missing).

    Args:
        run_dir: target directory; must not already hold a ``lineage.sqlite``.
        rounds: number of round records (rounds 1..rounds).
        sites: number of sites in the genesis record (``site-000``, ``site-001``, ...).
        dim: length of each flat update / of the model's ``w`` array.
        seed: seed of the numpy generator for data, updates and models.
        late_joiner: add ``site-late`` with a site-join record before round 2.
        resume_after: if set, close the writer after that round, reopen it with
            :meth:`LineageWriter.open` and append a resume record (from that round).
        reject_every: if > 0, every ``reject_every``-th contribution is screened out
            (fate ``rejected``) instead of accepted.
        refuse: ``(round, site index)``: that site refuses that round (ledger ``refused``,
            round ``rejected[site] = "policy: epsilon ceiling"``).
        close: write a closing record and ``model.npz``.
        ledgers: keep each site's ledger under ``sites/<site_id>/ledger.jsonl``.
        durable: fsync each record and ledger line (off for large benchmark chains).
        evaluations: every contributing site also signs an evaluation of the round's
            ``model_out`` (the round record's ``evaluations``).
        chained: sites chain their contributions (``fedsilo.contribution/2``, each naming
            the site's previous attestation); False: the unchained form of older chains.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    run_id = f"synthetic-{seed}"
    server_key = load_or_create_key(run_dir / "keys" / "server.pem")
    site_ids = [f"site-{i:03d}" for i in range(sites)]
    keys: dict[str, Ed25519PrivateKey] = {}
    fingerprints: dict[str, str] = {}
    identities: list[SiteIdentity] = []
    for site_id in site_ids + (["site-late"] if late_joiner else []):
        keys[site_id] = load_or_create_key(run_dir / "sites" / site_id / "key.pem")
        local = {"x": rng.normal(size=(4, dim)).astype(np.float32)}
        fingerprints[site_id] = data_fingerprint(local, preprocessing={"scaler": "none"})
        identities.append(
            SiteIdentity(
                site_id, public_key_hex(keys[site_id]), fingerprints[site_id], {"max_epsilon": 8.0},
                num_examples=100,  # the bound of the counts drawn below (10..99)
                declaration=sign_declaration(keys[site_id], run_id, site_id,
                                             fingerprints[site_id], 100),
                app_digest="sha256:" + "ab" * 32,  # the app bundle each site ran
            )
        )
    model = {"w": np.zeros(dim, np.float32), "b": np.zeros(2, np.float32)}
    result = SyntheticRun(run_dir, run_id, list(keys))
    result.model_digests.append(arrays_digest(model))
    writer = LineageWriter.create(run_dir / DB_NAME, server_key, durable=durable)
    ledgers_by_site = {
        s: SiteLedger(run_dir / "sites" / s / "ledger.jsonl", fsync=durable) for s in keys
    }
    now = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    result.digests.append(
        writer.append(
            GenesisRecord(
                run_id=run_id,
                created_at=now,
                config={"rounds": rounds, "seed": seed},
                code_version={"fedsilo": "0.1.0", "flwr": "1.42.0", "git_commit": None},
                initial_model_digest=result.model_digests[0],
                server_public_key=public_key_hex(server_key),
                sites=identities[:sites],
                # a note, so that tamper tests cover every genesis field
                notes=["synthetic run: no real sites or training"],
                # a task identity with statistics, for the same reason
                task={"name": "synthetic", "version": "1",
                      "layout_digest": "sha256:" + "1" * 64, "schema_digest": "sha256:" + "2" * 64,
                      "statistics": {"digest": "sha256:" + "3" * 64, "sites": sites,
                                     "values": {"count": [float(sites)]}}},
            )
        )
    )
    active = list(site_ids)
    counter = 0
    # each site's last attestation digest (what a server records and sends back as prev)
    heads = {s: GENESIS_ATTESTATION for s in keys}
    for r in range(1, rounds + 1):
        if late_joiner and r == 2:
            result.digests.append(writer.append(SiteJoinRecord(identities[-1], round=2)))
            active.append("site-late")
        model_in = result.model_digests[-1]
        contributions: list[SiteContribution] = []
        rejected: dict[str, str] = {}
        accepted_updates = []
        for site_id in active:
            if refuse is not None and refuse[0] == r and site_ids[refuse[1]] == site_id:
                rejected[site_id] = "policy: epsilon ceiling"
                if ledgers:
                    ledgers_by_site[site_id].append(
                        {
                            "run_id": run_id,
                            "site_id": site_id,
                            "round": r,
                            "status": "refused",
                            "reason": rejected[site_id],
                            "time": now,
                        }
                    )
                continue
            update = rng.normal(scale=0.1, size=dim).astype(np.float32)
            digest = update_digest(update)
            n = int(rng.integers(10, 100))
            prev = heads[site_id] if chained else None
            message = contribution_message(run_id, r, digest, fingerprints[site_id], prev)
            signature = keys[site_id].sign(message).hex()
            if chained:
                heads[site_id] = attestation_digest(message)
            counter += 1
            fate = Fate.REJECTED if reject_every and counter % reject_every == 0 else Fate.ACCEPTED
            if fate == Fate.REJECTED:
                rejected[site_id] = "norm bound exceeded"
            else:
                accepted_updates.append(update)
            contributions.append(
                SiteContribution(
                    site_id,
                    digest,
                    n,
                    fingerprints[site_id],
                    signature,
                    fate=fate,
                    score=None,
                    detail={} if fate == Fate.ACCEPTED else {"norm": 99.0},
                    prev=prev,
                )
            )
            if ledgers:
                ledgers_by_site[site_id].append(
                    {
                        "run_id": run_id,
                        "site_id": site_id,
                        "round": r,
                        "status": "sent",
                        "update_digest": digest,
                        "data_fingerprint": fingerprints[site_id],
                        "num_examples": n,
                        "signature": signature,
                        "time": now,
                        **({"prev": prev, "attestation": heads[site_id]} if chained else {}),
                    }
                )
        if accepted_updates:
            model = {"w": model["w"] + np.mean(accepted_updates, axis=0), "b": model["b"]}
        result.model_digests.append(arrays_digest(model))
        result.digests.append(
            writer.append(
                RoundRecord(
                    round=r,
                    sampled=list(active),
                    replied=[c.site_id for c in contributions],
                    accepted=[c.site_id for c in contributions if c.fate == Fate.ACCEPTED],
                    rejected=rejected,
                    dropped=[],
                    contributions=contributions,
                    model_in=model_in,
                    model_out=result.model_digests[-1],
                    strategy={"name": "fedavg"},
                    metrics={"loss": round(1.0 / r, 6)},
                    timings={"aggregate": 0.001},
                    evaluations=_evaluations(keys, contributions, run_id, r,
                                             result.model_digests[-1]) if evaluations else [],
                )
            )
        )
        if resume_after == r:
            writer.close()
            writer = LineageWriter.open(run_dir / DB_NAME, server_key, durable=durable)
            result.digests.append(
                writer.append(
                    ResumeRecord(
                        resumed_at=now,
                        from_round=r,
                        reason="synthetic resume",
                    )
                )
            )
    if close:
        result.digests.append(
            writer.append(
                ClosingRecord(
                    reason="rounds_done",
                    detail="",
                    rounds_completed=rounds,
                    final_model_digest=result.model_digests[-1],
                )
            )
        )
        np.savez(run_dir / MODEL_NAME, **model)  # after the closing record, see verify
    writer.close()
    return result


def _evaluations(keys: dict[str, Ed25519PrivateKey], contributions: list[SiteContribution],
                 run_id: str, r: int, model_out: str) -> list[SiteEvaluation]:
    """Each contributing site's signed score of ``model_out`` (deterministic values)."""
    out = []
    for i, c in enumerate(contributions):
        loss, metrics, n = round(1.0 / (r + i), 6), {"accuracy": round(0.5 + 0.01 * i, 6)}, 20 + i
        signature = sign_evaluation(keys[c.site_id], run_id, r, model_out, loss, metrics, n)
        out.append(SiteEvaluation(c.site_id, model_out, loss, n, metrics, signature))
    return out

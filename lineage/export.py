"""Exports of a run's chain: JSON Lines (lossless) and W3C PROV-JSON (provenance graph)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .canonical import canonical_json_parsed
from .chain import load_chain
from .errors import LineageError
from .fates import Fate
from .keys import key_fingerprint
from .runs import locate_run
from .store import parse_json, read_chain

PROV_NAMESPACE = "urn:fedsilo:"

Out = Path | IO[str] | None


def export_jsonl(run_dir: Path, out: Out = None) -> int:
    """Write every envelope as one canonical-JSON line (schema, seq, type, prev, body,
    digest, signature): lossless, so digests and signatures can be rechecked from it.

    Args:
        run_dir: the run directory (or its ``lineage.sqlite``).
        out: a file path (must not be one of the run's inputs), an open text stream, or
            ``None`` for standard output.

    Returns:
        The number of records written.

    Raises:
        LineageError: if the store is unreadable or ``out`` is an input file.
    """
    run = locate_run(run_dir)
    envelopes = read_chain(run.db_path)

    def write(stream: IO[str]) -> None:
        for env in envelopes:
            stream.write(canonical_json_parsed(env).decode("utf-8"))
            stream.write("\n")

    _write_out(out, write, run.db_path)
    return len(envelopes)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines export back into envelopes.

    Raises:
        LineageError: if the file is missing or a line is not a JSON object.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LineageError(f"{path}: cannot read JSON Lines export ({exc})") from None
    envelopes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            env = parse_json(line)
        except ValueError as exc:
            raise LineageError(f"{path}: line {number}: not JSON ({exc})") from None
        if type(env) is not dict:
            raise LineageError(f"{path}: line {number}: not a JSON object")
        envelopes.append(env)
    return envelopes


def _qn(kind: str, value: str) -> str:
    """A PROV qualified name ``fedsilo:<kind>-<value>`` with unsafe characters escaped."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", lambda m: f"%{ord(m.group()):02X}", value)
    return f"fedsilo:{kind}-{safe}"


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]


def prov_document(run_dir: Path) -> dict[str, Any]:
    """Build the W3C PROV-JSON document of a run.

    Entities: models (``fedsilo:model-<hex>``), updates (``fedsilo:update-<hex>``) and data
    fingerprints (``fedsilo:data-<hex>``). Activities: rounds (``fedsilo:round-<seq>``) and
    local training (``fedsilo:train-<seq>-<site>``). Agents: the server and the sites.
    Relations: ``wasGeneratedBy`` (model by round, update by training), ``used`` (round used
    model in and accepted updates; training used model in and data), ``wasAssociatedWith``
    (round with server, training with site), ``wasAttributedTo`` (update and data to site,
    model to server) and ``wasDerivedFrom`` (model out from model in and accepted updates).
    """
    chain = load_chain(run_dir)
    genesis = chain.genesis
    doc: dict[str, dict[str, Any]] = {
        "prefix": {"fedsilo": PROV_NAMESPACE},
        "entity": {},
        "activity": {},
        "agent": {},
        "wasGeneratedBy": {},
        "used": {},
        "wasAssociatedWith": {},
        "wasAttributedTo": {},
        "wasDerivedFrom": {},
    }
    counter = [0]

    def relation(kind: str, **fields: Any) -> None:
        counter[0] += 1
        doc[kind][f"_:{kind}{counter[0]}"] = {f"prov:{k}": v for k, v in fields.items()}

    def model(digest: str) -> str:
        qn = _qn("model", _hex(digest))
        doc["entity"].setdefault(qn, {"prov:type": "fedsilo:Model", "fedsilo:digest": digest})
        return qn

    server = "fedsilo:server"
    doc["agent"][server] = {
        "prov:type": "prov:SoftwareAgent",
        "fedsilo:publicKey": genesis["server_public_key"],
        "fedsilo:keyFingerprint": key_fingerprint(genesis["server_public_key"]),
        "fedsilo:runId": genesis["run_id"],
    }
    sites = list(genesis["sites"]) + [e["body"]["site"] for e in chain.of_type("site_join")]
    for site in sites:
        agent = _qn("site", site["site_id"])
        doc["agent"][agent] = {
            "prov:type": "prov:Organization",
            "fedsilo:siteId": site["site_id"],
            "fedsilo:publicKey": site["public_key"],
        }
    initial = model(genesis["initial_model_digest"])
    relation("wasAttributedTo", entity=initial, agent=server)

    for seq, env in enumerate(chain.envelopes):
        if env["type"] != "round":
            continue
        body = env["body"]
        activity = f"fedsilo:round-{seq}"
        doc["activity"][activity] = {
            "prov:type": "fedsilo:Round",
            "fedsilo:round": body["round"],
            "fedsilo:status": body["status"],
            "fedsilo:recordDigest": env["digest"],
            "fedsilo:strategy": json.dumps(body["strategy"], sort_keys=True),
        }
        relation("wasAssociatedWith", activity=activity, agent=server)
        model_in = model(body["model_in"])
        relation("used", activity=activity, entity=model_in)
        model_out = None
        if body["status"] == "completed" and body["model_out"] != body["model_in"]:
            model_out = model(body["model_out"])
            relation("wasGeneratedBy", entity=model_out, activity=activity)
            relation("wasAttributedTo", entity=model_out, agent=server)
            relation("wasDerivedFrom", generatedEntity=model_out, usedEntity=model_in)
        for c in body["contributions"]:
            site_agent = _qn("site", c["site_id"])
            train = _qn(f"train-{seq}", c["site_id"])
            doc["activity"][train] = {
                "prov:type": "fedsilo:LocalTraining",
                "fedsilo:round": body["round"],
                "fedsilo:siteId": c["site_id"],
            }
            relation("wasAssociatedWith", activity=train, agent=site_agent)
            relation("used", activity=train, entity=model_in)
            data = _qn("data", _hex(c["data_fingerprint"]))
            doc["entity"].setdefault(
                data,
                {"prov:type": "fedsilo:DataFingerprint", "fedsilo:digest": c["data_fingerprint"]},
            )
            relation("used", activity=train, entity=data)
            relation("wasAttributedTo", entity=data, agent=site_agent)
            update = _qn("update", f"{_hex(c['update_digest'])}-{seq}-{c['site_id']}")
            doc["entity"][update] = {
                "prov:type": "fedsilo:Update",
                "fedsilo:digest": c["update_digest"],
                "fedsilo:round": body["round"],
                "fedsilo:siteId": c["site_id"],
                "fedsilo:numExamples": c["num_examples"],
                "fedsilo:fate": c["fate"],
                "fedsilo:signature": c["signature"],
            }
            relation("wasGeneratedBy", entity=update, activity=train)
            relation("wasAttributedTo", entity=update, agent=site_agent)
            if c["fate"] == Fate.ACCEPTED:
                relation("used", activity=activity, entity=update)
                if model_out is not None:
                    relation("wasDerivedFrom", generatedEntity=model_out, usedEntity=update)
    return doc


def export_prov_json(run_dir: Path, out: Out = None) -> dict[str, Any]:
    """Write the run's W3C PROV-JSON document (see :func:`prov_document`).

    Args:
        run_dir: the run directory (or its ``lineage.sqlite``).
        out: a file path (must not be one of the run's inputs), an open text stream, or
            ``None`` for standard output.

    Returns:
        The document written.
    """
    doc = prov_document(run_dir)
    db_path = locate_run(run_dir).db_path

    def write(stream: IO[str]) -> None:
        json.dump(doc, stream, indent=1, sort_keys=True, ensure_ascii=False)
        stream.write("\n")

    _write_out(out, write, db_path)
    return doc


def _write_out(out: Out, write: Callable[[IO[str]], None], db_path: Path) -> None:
    if out is None:
        write(sys.stdout)
        return
    if isinstance(out, str | Path):
        target = Path(out)
        protected = {db_path.resolve(), db_path.parent.resolve() / "model.npz"}
        if target.resolve() in protected:
            raise LineageError(f"{target}: refusing to overwrite an input of the run")
        try:
            with target.open("w", encoding="utf-8") as stream:
                write(stream)
        except OSError as exc:
            raise LineageError(f"{target}: cannot write ({exc.strerror})") from None
        return
    write(out)

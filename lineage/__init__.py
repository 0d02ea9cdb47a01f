"""fedsilo.lineage: a tamper-evident, signed record of every round, and the tools to prove it.

See ``docs/lineage.md`` for the record schema, digest layouts and the CLI.
"""

from .canonical import SCHEMA_VERSION, canonical_json, sha256_hex
from .chain import LoadedChain, load_chain
from .digests import arrays_digest, npz_digest, update_digest
from .errors import LineageError
from .export import export_jsonl, export_prov_json, prov_document, read_jsonl
from .fates import Fate, SecAggFate
from .fingerprint import data_fingerprint, manifest_for
from .keys import key_fingerprint, load_or_create_key, load_public_key, public_key_hex
from .ledger import SiteLedger, validate_ledger_entry
from .query import Contributor, contributors, reconcile
from .records import (
    RECORD_TYPES,
    ClosingRecord,
    GenesisRecord,
    Record,
    ResumeRecord,
    RoundRecord,
    SiteContribution,
    SiteIdentity,
    SiteJoinRecord,
    record_from_dict,
    validate_body,
)
from .runs import RunPaths, locate_run
from .signing import (
    GENESIS_ATTESTATION,
    attestation_digest,
    contribution_message,
    sign_contribution,
    verify_contribution,
)
from .store import LineageWriter, read_chain
from .verify import VerifyReport, verify_envelopes, verify_run

__all__ = [
    "RECORD_TYPES",
    "SCHEMA_VERSION",
    "ClosingRecord",
    "Fate",
    "Contributor",
    "GenesisRecord",
    "LineageError",
    "LineageWriter",
    "LoadedChain",
    "Record",
    "ResumeRecord",
    "RoundRecord",
    "RunPaths",
    "SecAggFate",
    "SiteContribution",
    "SiteIdentity",
    "SiteJoinRecord",
    "SiteLedger",
    "VerifyReport",
    "arrays_digest",
    "canonical_json",
    "GENESIS_ATTESTATION",
    "attestation_digest",
    "contribution_message",
    "contributors",
    "data_fingerprint",
    "export_jsonl",
    "export_prov_json",
    "key_fingerprint",
    "load_chain",
    "load_or_create_key",
    "load_public_key",
    "locate_run",
    "manifest_for",
    "npz_digest",
    "prov_document",
    "public_key_hex",
    "read_chain",
    "read_jsonl",
    "reconcile",
    "record_from_dict",
    "sha256_hex",
    "sign_contribution",
    "update_digest",
    "validate_body",
    "validate_ledger_entry",
    "verify_contribution",
    "verify_envelopes",
    "verify_run",
]
